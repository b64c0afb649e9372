//! Query strings: one parameter's value, percent-decoded as browsers and
//! `URLSearchParams` encode it (`+` is a space, an invalid escape stays as
//! written), by `form_urlencoded`.

/// The value of the first `name` in a query string.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_read_from_the_query() {
        assert_eq!(
            query_param(Some("a=1&token=abc.def"), "token").as_deref(),
            Some("abc.def")
        );
        assert_eq!(
            query_param(Some("token=a%2Eb"), "token").as_deref(),
            Some("a.b")
        );
        assert_eq!(
            query_param(Some("token=%zz%"), "token").as_deref(),
            Some("%zz%")
        );
        assert_eq!(query_param(Some("t=a+b"), "t").as_deref(), Some("a b"));
        assert_eq!(query_param(Some("token"), "token").as_deref(), Some(""));
        assert_eq!(query_param(Some("other=1"), "token"), None);
        assert_eq!(query_param(None, "token"), None);
    }
}
