//! Cross-origin access (CORS): which web pages may call the API and open job streams from a browser,
//! and who says so.
//!
//! Deployed, the platform does: API Gateway's `CorsConfiguration` and the events Function URL's `Cors`
//! (template.yaml, from the `AllowedOrigins` parameter) answer preflights and add the headers to every
//! answer. The functions add none: API Gateway ignores an integration's CORS headers once it has a
//! configuration, so a second source could only disagree with the first. What the functions do is
//! [`answer_preflights`]: an `OPTIONS` request that reaches them (API Gateway hands preflights to a
//! function when a route such as `ANY /jobs` would catch them; template.yaml gives them routes of
//! their own, without the authorizer a preflight cannot pass) gets `204`, never the `405` that would
//! fail it, and needs no identity.
//!
//! `jobctl dev` plays the platform's part with [`layer`] (as it plays the authorizer's), built from the
//! lists below, which are template.yaml's (a test compares them).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The API's methods a page may use.
pub const METHODS: [Method; 3] = [Method::GET, Method::POST, Method::DELETE];

/// Request headers a page may send the API beyond the CORS-safelisted ones: a JWT, a JSON body, an
/// idempotency key, its trace context; and SigV4's, for `AuthMode=iam`.
pub const REQUEST_HEADERS: [&str; 7] = [
    "authorization",
    "content-type",
    "idempotency-key",
    "traceparent",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
];

/// Answer headers a page may read beyond the safelisted ones: a submit's `Location`, a `429`'s
/// `Retry-After`.
pub const EXPOSED_HEADERS: [&str; 2] = ["location", "retry-after"];

/// Request headers a page may send a job stream (`GET` only). A browser's `EventSource` needs none: it
/// sends `Last-Event-ID` without asking while the value is short and plain, as the stream's ids are.
/// Clients that set it themselves (fetch-based readers) ask first.
pub const STREAM_REQUEST_HEADERS: [&str; 1] = ["last-event-id"];

/// How long a browser may reuse a preflight's answer.
pub const MAX_AGE: Duration = Duration::from_secs(600);

/// An origin allowed to call: `scheme://host[:port]` as browsers send it in `Origin`, or any (`*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigin {
    Any,
    /// Serialized as browsers send it: lowercase host, no default port, no trailing slash.
    Origin(String),
}

/// Not an origin (see [`AllowedOrigin::parse`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an origin: expected scheme://host[:port] (http or https, no path), or *")]
pub struct InvalidOrigin(String);

impl AllowedOrigin {
    /// `*`, or an http(s) URL with nothing after the host and port (a trailing `/` is allowed, and
    /// dropped: browsers never send one).
    pub fn parse(raw: &str) -> Result<Self, InvalidOrigin> {
        if raw == "*" {
            return Ok(Self::Any);
        }
        let bad = || InvalidOrigin(crate::api::quote(raw));
        let url = url::Url::parse(raw).map_err(|_| bad())?;
        let bare = matches!(url.scheme(), "http" | "https")
            && url.host().is_some()
            && url.username().is_empty()
            && url.password().is_none()
            && url.path() == "/"
            && url.query().is_none()
            && url.fragment().is_none();
        if !bare {
            return Err(bad());
        }
        Ok(Self::Origin(url.origin().ascii_serialization()))
    }
}

impl FromStr for AllowedOrigin {
    type Err = InvalidOrigin;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for AllowedOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Origin(o) => f.write_str(o),
        }
    }
}

/// The platform's CORS, for a server that is its own platform (`jobctl dev`): the API's and the
/// streams' lists together (one server answers both), plus `extra_headers` only that server reads
/// (`jobctl dev --user-header`'s `X-User-Id`). Answers every `OPTIONS` itself, as API Gateway does.
pub fn layer(origins: &[AllowedOrigin], extra_headers: &[HeaderName]) -> CorsLayer {
    let allow_origin = if origins.contains(&AllowedOrigin::Any) {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().map(|o| {
            HeaderValue::from_str(&o.to_string()).expect("a parsed origin is a valid header value")
        }))
    };
    let names = |list: &[&'static str]| {
        list.iter()
            .map(|h| HeaderName::from_static(h))
            .collect::<Vec<_>>()
    };
    let mut request_headers = names(&REQUEST_HEADERS);
    request_headers.extend(names(&STREAM_REQUEST_HEADERS));
    request_headers.extend(extra_headers.iter().cloned());
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods(METHODS.to_vec())
        .allow_headers(request_headers)
        .expose_headers(names(&EXPOSED_HEADERS))
        .max_age(MAX_AGE)
}

/// Answers every `OPTIONS` request `204` before routing, authentication or anything else (see the
/// module docs): for any path, as API Gateway's own preflight answer does.
pub(super) async fn answer_preflights(req: Request, next: Next) -> Response {
    if req.method() == Method::OPTIONS {
        return http::StatusCode::NO_CONTENT.into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn origins_are_read_as_browsers_send_them() {
        for (raw, origin) in [
            ("https://app.example.com", "https://app.example.com"),
            ("https://app.example.com/", "https://app.example.com"),
            ("https://App.Example.com:443", "https://app.example.com"),
            ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
            ("http://[::1]:3000", "http://[::1]:3000"),
        ] {
            assert_eq!(
                AllowedOrigin::parse(raw),
                Ok(AllowedOrigin::Origin(origin.into())),
                "{raw}"
            );
        }
        assert_eq!(AllowedOrigin::parse("*"), Ok(AllowedOrigin::Any));
        for bad in [
            "",
            "app.example.com",
            "ftp://app.example.com",
            "https://app.example.com/ui",
            "https://app.example.com/?x",
            "https://app.example.com#top",
            "https://user@app.example.com",
            "file:///tmp",
            "null",
            "**",
        ] {
            assert!(AllowedOrigin::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// A resource of template.yaml, intrinsics in their long form.
    fn resource(name: &str) -> Value {
        let template = crate::template::to_json_value(crate::template::TEMPLATE_YAML)
            .expect("template.yaml is YAML");
        template["Resources"][name].clone()
    }

    /// `!If [HasAllowedOrigins, config, !Ref AWS::NoValue]`: the config.
    fn only_with_allowed_origins(v: &Value) -> Value {
        let branches = v["Fn::If"]
            .as_array()
            .expect("set only with AllowedOrigins");
        assert_eq!(branches[0], "HasAllowedOrigins");
        assert_eq!(branches[2], json!({"Ref": "AWS::NoValue"}));
        assert_eq!(
            branches[1]["AllowOrigins"],
            json!({"Ref": "AllowedOrigins"})
        );
        branches[1].clone()
    }

    fn strings(v: &Value) -> Vec<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("a list: {v}"))
            .iter()
            .map(|s| s.as_str().unwrap().to_lowercase())
            .collect()
    }

    #[test]
    fn the_template_allows_what_the_dev_server_allows() {
        let api =
            only_with_allowed_origins(&resource("HttpApi")["Properties"]["CorsConfiguration"]);
        let methods: Vec<String> = METHODS.iter().map(|m| m.as_str().to_lowercase()).collect();
        assert_eq!(strings(&api["AllowMethods"]), methods);
        assert_eq!(strings(&api["AllowHeaders"]), REQUEST_HEADERS);
        assert_eq!(strings(&api["ExposeHeaders"]), EXPOSED_HEADERS);
        assert_eq!(api["MaxAge"], MAX_AGE.as_secs());
        assert!(
            api.get("AllowCredentials").is_none(),
            "no cookies: tokens travel in headers"
        );

        let url = resource("EventsFunction")["Properties"]["FunctionUrlConfig"].clone();
        let stream = only_with_allowed_origins(&url["Cors"]);
        assert_eq!(strings(&stream["AllowMethods"]), ["get"]);
        assert_eq!(strings(&stream["AllowHeaders"]), STREAM_REQUEST_HEADERS);
        assert_eq!(stream["MaxAge"], MAX_AGE.as_secs());
    }

    /// The routes whose URL carries its own authority (a waitpoint's `complete_url`): no authorizer.
    const CAPABILITY_ROUTES: [&str; 2] = ["POST /waitpoints/{token}", "GET /waitpoints/{token}"];

    /// API Gateway hands a preflight to the route that matches it; a route with the authorizer would
    /// refuse it (browsers send no credentials on one). Every path an `ANY` or `$default` route
    /// catches has an `OPTIONS` route of its own, without the authorizer, and only those and the
    /// capability routes are so.
    #[test]
    fn every_route_that_catches_preflights_has_an_open_options_route() {
        let template = crate::template::to_json_value(crate::template::TEMPLATE_YAML).unwrap();
        let routes: Vec<(&String, &Value)> = template["Resources"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, r)| r["Type"] == "AWS::ApiGatewayV2::Route")
            .collect();
        let key = |r: &Value| r["Properties"]["RouteKey"].as_str().unwrap().to_owned();
        let options: Vec<String> = routes
            .iter()
            .map(|(_, r)| key(r))
            .filter_map(|k| k.strip_prefix("OPTIONS ").map(str::to_owned))
            .collect();
        for (name, r) in &routes {
            let k = key(r);
            let open = r["Properties"]["AuthorizationType"] == "NONE";
            if let Some(path) = k.strip_prefix("ANY ") {
                assert!(
                    options.iter().any(|p| p == path),
                    "{name}: no OPTIONS {path}"
                );
            }
            if k == "$default" {
                assert!(options.iter().any(|p| p == "/{proxy+}"), "{name}");
            }
            if k.starts_with("OPTIONS ") {
                assert!(open, "{name}: a preflight cannot pass an authorizer");
                assert_eq!(r["Condition"], "HasAllowedOrigins", "{name}");
            } else if CAPABILITY_ROUTES.contains(&k.as_str()) {
                assert!(open, "{name}: its token is its authority");
            } else {
                assert!(!open, "{name}: every other route has the authorizer");
            }
        }
    }
}
