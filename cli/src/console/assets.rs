//! The console's static files, compiled into `jobctl` (no Node build, no CDN: it works offline), and
//! the headers every console page is served with. Owns `/` and `/console/*`; never serves job data (the
//! page reads that from the API, and renders it as text).

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

/// The page's policy: its own scripts, styles and API only. No inline script or style (so markup that
/// slipped into the page could not run), no framing, no plugins, no base-URI tricks, and images only
/// from itself or `data:` (the favicon).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
img-src 'self' data:; manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/console/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of `cli/console/`: a new one is added here too (the test `every_file_is_served` says so).
static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("jobs.js", JS),
    asset!("job.js", JS),
    asset!("submit.js", JS),
    asset!("ops.js", JS),
    asset!("usage.js", JS),
];

/// Each file's strong ETag: a digest of its bytes, so a browser revalidates and gets `304` until the
/// binary changes.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let digest = Sha256::digest(a.body);
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a valid header value")
        })
        .collect()
});

/// The total size of the console's files, in bytes (what a first visit downloads, uncompressed).
pub fn weight() -> usize {
    ASSETS.iter().map(|a| a.body.len()).sum()
}

/// `/` (the page) and `/console/{file}`: merge into a router that serves the API.
pub fn routes() -> Router {
    Router::new()
        .route(
            "/",
            get(|h: HeaderMap| async move { serve("index.html", &h) }),
        )
        .route(
            "/console/{file}",
            get(|Path(file): Path<String>, h: HeaderMap| async move { serve(&file, &h) }),
        )
}

fn serve(name: &str, request: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return not_found();
    };
    let (asset, etag) = (&ASSETS[i], &ETAGS[i]);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::ETAG, etag.clone());
    // Revalidate every time (a cheap 304): a new jobctl must never run an old page's scripts.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secure(h);
    resp
}

/// A name that is not one of the files: the API's error shape, with the page's headers.
fn not_found() -> Response {
    let body = serde_json::json!({"error": {"code": "route_not_found", "message": "no such console file"}});
    let mut resp = (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    secure(resp.headers_mut());
    resp
}

/// The headers of every console response: the policy, no MIME sniffing (a JSON answer is never run as
/// script), no referrer (job ids stay on the page).
fn secure(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    async fn get(uri: &str, etag: Option<&str>) -> Response {
        let mut req = axum::http::Request::get(uri);
        if let Some(e) = etag {
            req = req.header(header::IF_NONE_MATCH, e);
        }
        routes()
            .oneshot(req.body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn every_file_is_served_with_its_type_policy_and_etag_and_revalidates_to_304() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/console");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = ASSETS.iter().map(|a| a.name.to_owned()).collect();
        listed.sort();
        assert_eq!(listed, on_disk, "every file of cli/console is embedded");
        for a in ASSETS {
            let resp = get(&format!("/console/{}", a.name), None).await;
            assert_eq!(resp.status(), 200, "{}", a.name);
            let h = resp.headers();
            assert_eq!(h[header::CONTENT_TYPE], a.content_type);
            assert_eq!(h[header::CONTENT_SECURITY_POLICY], CSP);
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            let etag = h[header::ETAG].to_str().unwrap().to_owned();
            let again = get(&format!("/console/{}", a.name), Some(&etag)).await;
            assert_eq!(again.status(), 304, "{}", a.name);
        }
        let page = get("/", None).await;
        assert_eq!(
            page.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert_eq!(page.headers()[header::CONTENT_SECURITY_POLICY], CSP);
    }

    #[tokio::test]
    async fn unknown_files_and_paths_that_leave_the_folder_are_404() {
        for uri in ["/console/nope.js", "/console/..%2FCargo.toml", "/console/"] {
            let resp = get(uri, None).await;
            assert_eq!(resp.status(), 404, "{uri}");
        }
    }

    #[test]
    fn the_console_weighs_under_64_kib() {
        assert!(weight() < 64 * 1024, "{} bytes", weight());
    }
}
