//! The reference screens and the JavaScript client, compiled into the
//! binary from `web/`: a kiosk TV pointed at `/display`, a tablet at
//! `/staff` and a phone at `/p/{patient_id}?token=...` work with no CDN and
//! no build step (docs/screens.md, docs/client.md). The box's OpenAPI
//! document (`docs/openapi.yaml`) is served the same way, at
//! `/api/openapi.yaml`, so an integrator gets the contract of the version
//! the box runs.
//!
//! This module owns the asset table and how an asset is answered: its
//! content type, revalidation by ETag, and the headers that keep the pages
//! to the box's own scripts and sockets.

use std::sync::OnceLock;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{
    HeaderMap, HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG,
    IF_NONE_MATCH, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use hyper::{Response, StatusCode};

use super::response::HttpResponse;
use crate::core::room::PatientId;

/// One file served from memory.
#[derive(Debug, PartialEq, Eq)]
pub struct Asset {
    pub path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";
const YAML: &str = "application/yaml";

macro_rules! asset {
    ($path:literal, $file:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_str!(concat!("../../web/", $file)),
        }
    };
}

static ASSETS: [Asset; 12] = [
    asset!("/", "index.html", HTML),
    asset!("/display", "display.html", HTML),
    asset!("/staff", "staff.html", HTML),
    asset!("/p/{patient_id}", "patient.html", HTML),
    asset!("/client.js", "client.js", JS),
    asset!("/screens.js", "screens.js", JS),
    asset!("/display.js", "display.js", JS),
    asset!("/staff.js", "staff.js", JS),
    asset!("/patient.js", "patient.js", JS),
    asset!("/screens.css", "screens.css", CSS),
    asset!("/favicon.svg", "favicon.svg", SVG),
    Asset {
        path: "/api/openapi.yaml",
        content_type: YAML,
        body: include_str!("../../docs/openapi.yaml"),
    },
];

/// Pages may load only the box's own scripts and styles, and talk only to
/// the box: an injected `<script>` from elsewhere does not run.
const CONTENT_SECURITY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'self'";

/// The asset a path names: a fixed path, or `/p/{patient_id}` with a valid id.
pub fn resolve(segments: &[&str]) -> Option<&'static Asset> {
    let path = match segments {
        ["p", id] if PatientId::parse(id).is_some() => "/p/{patient_id}",
        ["api", "openapi.yaml"] => "/api/openapi.yaml",
        [] => "/",
        [name] => ASSETS
            .iter()
            .map(|asset| asset.path)
            .find(|path| path.strip_prefix('/') == Some(name))?,
        _ => return None,
    };
    ASSETS.iter().find(|asset| asset.path == path)
}

impl Asset {
    /// `GET`: the asset, or `304` when the browser's copy is current.
    pub fn respond(&'static self, request_headers: &HeaderMap) -> HttpResponse {
        let etag = self.etag();
        let fresh = request_headers
            .get(IF_NONE_MATCH)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|tags| {
                tags.split(',')
                    .any(|tag| tag.trim() == etag.to_str().unwrap_or(""))
            });
        let mut response = if fresh {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            response
        } else {
            Response::new(Full::new(Bytes::from_static(self.body.as_bytes())))
        };
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        // Revalidate every time: an upgraded box serves new screens at once.
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(ETAG, etag);
        headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        // Patient links carry a token in the query: never send it elsewhere.
        headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        if self.content_type == HTML {
            headers.insert(
                CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY),
            );
            headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        }
        response
    }

    /// A strong validator: a hash of the content, computed once per asset.
    fn etag(&'static self) -> HeaderValue {
        static TAGS: OnceLock<Vec<HeaderValue>> = OnceLock::new();
        let tags = TAGS.get_or_init(|| {
            ASSETS
                .iter()
                .map(|asset| {
                    HeaderValue::from_str(&format!("\"{:016x}\"", fnv1a(asset.body.as_bytes())))
                        .unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
                })
                .collect()
        });
        ASSETS
            .iter()
            .position(|asset| std::ptr::eq(asset, self))
            .and_then(|index| tags.get(index).cloned())
            .unwrap_or_else(|| HeaderValue::from_static("\"0\""))
    }
}

/// FNV-1a, 64 bits: enough to tell two versions of a file apart.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_to_assets() {
        assert_eq!(resolve(&[]).map(|asset| asset.path), Some("/"));
        assert_eq!(
            resolve(&["display"]).map(|asset| asset.path),
            Some("/display")
        );
        assert_eq!(
            resolve(&["p", "A-12_3"]).map(|asset| asset.path),
            Some("/p/{patient_id}")
        );
        assert_eq!(resolve(&["p", "no spaces"]), None);
        assert_eq!(resolve(&["p"]), None);
        assert_eq!(resolve(&["nope.js"]), None);
        assert_eq!(
            resolve(&["api", "openapi.yaml"]).map(|asset| asset.path),
            Some("/api/openapi.yaml")
        );
        assert_eq!(resolve(&["openapi.yaml"]), None);
        assert_eq!(resolve(&["p", "{patient_id}"]), None);
    }

    #[test]
    fn every_asset_has_a_distinct_etag() {
        let tags: std::collections::HashSet<_> = ASSETS.iter().map(Asset::etag).collect();
        assert_eq!(tags.len(), ASSETS.len());
    }
}
