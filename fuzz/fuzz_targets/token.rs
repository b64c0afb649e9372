//! Tokens as they arrive: the `?token=` query parameter (percent-decoded)
//! and the JWT itself. Only a token signed with the secret is accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smartwait_gateway::auth::Authenticator;
use smartwait_gateway::config::AuthConfig;
use smartwait_gateway::wire::query_param;

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let authenticator = Authenticator::new(&AuthConfig::default(), b"fuzzing secret, 32 bytes long!!");
    let token = query_param(Some(query), "token");
    // The raw text as a whole token too (the Authorization header's case).
    for candidate in [token.as_deref(), Some(query)] {
        let _ = authenticator.identify(candidate);
    }
});
