//! Where the kit may send requests on a submitter's behalf (webhooks). A callback is a request made from
//! inside the Lambda network, so it must not reach anything private: the URL must be https, carry no
//! credentials, and its host must be (or resolve to) public addresses only — never loopback, private,
//! link-local (the instance metadata service at 169.254.169.254 and fd00:ec2::254 among them), shared,
//! reserved or multicast space, nor an IPv6 form that carries such an IPv4 address.
//!
//! The check runs twice: at submit ([`validate`], a clear 422 for the client) and at connect time
//! ([`PublicResolver`] for names, [`check_target`] for IP literals), since DNS can change in between
//! (rebinding).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use url::{Host, Url};

/// Longest accepted callback URL.
pub const MAX_CALLBACK_URL_LEN: usize = 2048;

/// How long the host's resolution may take before the URL is rejected.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a callback URL is refused; the message is shown to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    #[error("must be at most {MAX_CALLBACK_URL_LEN} characters")]
    TooLong,
    #[error("not a valid absolute URL: {0}")]
    Malformed(String),
    #[error("must use https")]
    NotHttps,
    #[error("must not contain credentials")]
    Credentials,
    #[error("must name a host")]
    NoHost,
    #[error("host {0} does not resolve")]
    Unresolvable(String),
    #[error("host {host} resolves to {addr}, which is not a public address")]
    NotPublic { host: String, addr: IpAddr },
}

/// Checks `raw` and resolves its host. In `dev_mode` (`jobctl dev` only), loopback targets are allowed
/// too, over http or https, so local receivers work.
pub async fn validate(raw: &str, dev_mode: bool) -> Result<Url, CallbackError> {
    let (url, host) = parse(raw, dev_mode)?;
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<IpAddr> = match &host {
        Host::Ipv4(ip) => vec![IpAddr::V4(*ip)],
        Host::Ipv6(ip) => vec![IpAddr::V6(*ip)],
        Host::Domain(name) => {
            let lookup = tokio::net::lookup_host((name.as_str(), port));
            match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                Ok(Ok(found)) => found.map(|a| a.ip()).collect(),
                _ => vec![],
            }
        }
    };
    check_addresses(&host.to_string(), &addrs, url.scheme() == "http", dev_mode)?;
    Ok(url)
}

/// The syntactic checks: length, scheme, credentials, host.
fn parse(raw: &str, dev_mode: bool) -> Result<(Url, Host<String>), CallbackError> {
    if raw.len() > MAX_CALLBACK_URL_LEN {
        return Err(CallbackError::TooLong);
    }
    let url = Url::parse(raw).map_err(|e| CallbackError::Malformed(e.to_string()))?;
    match url.scheme() {
        "https" => {}
        "http" if dev_mode => {}
        _ => return Err(CallbackError::NotHttps),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(CallbackError::Credentials);
    }
    let host = url.host().ok_or(CallbackError::NoHost)?.to_owned();
    Ok((url, host))
}

/// Every address the host resolves to must be acceptable: one private answer is enough to reach inside.
fn check_addresses(
    host: &str,
    addrs: &[IpAddr],
    plain_http: bool,
    dev_mode: bool,
) -> Result<(), CallbackError> {
    if addrs.is_empty() {
        return Err(CallbackError::Unresolvable(host.to_owned()));
    }
    for &addr in addrs {
        let loopback_ok = dev_mode && is_loopback(addr);
        let ok = if plain_http {
            loopback_ok
        } else {
            loopback_ok || is_public_ip(addr)
        };
        if !ok {
            return Err(if plain_http && !is_loopback(addr) {
                CallbackError::NotHttps
            } else {
                CallbackError::NotPublic {
                    host: host.to_owned(),
                    addr,
                }
            });
        }
    }
    Ok(())
}

/// The IPv4 address an IPv6 address carries, for every form that routes to (or is translated into) one:
/// IPv4-mapped `::ffff:a.b.c.d`, IPv4-translated `::ffff:0:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4
/// `2002:AABB:CCDD::`, and ISATAP interface ids `…:0:5efe:a.b.c.d`. Such an address is judged by the
/// IPv4 address it embeds.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some(v4(hi, lo)),
        [0, 0, 0, 0, 0xffff, 0, hi, lo] => Some(v4(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(v4(hi, lo)),
        [0x2002, hi, lo, ..] => Some(v4(hi, lo)),
        [_, _, _, _, id, 0x5efe, hi, lo] if id & 0xfdff == 0 => Some(v4(hi, lo)),
        _ => None,
    }
}

/// Whether `addr` is globally routable unicast space (the parts of IANA's special-purpose registries a
/// webhook must never reach are excluded).
pub fn is_public_ip(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => match embedded_v4(ip) {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(ip),
        },
    }
}

/// Whether `addr` is loopback, IPv4 or IPv6, in any form.
fn is_loopback(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(ip) => ip.is_loopback(),
        IpAddr::V6(ip) => ip.is_loopback() || embedded_v4(ip).is_some_and(|v4| v4.is_loopback()),
    }
}

/// Whether a connection to `addr` is allowed: public space, or loopback when `allow_loopback` (local runs
/// and tests, whose receivers listen on 127.0.0.1).
pub fn may_connect(addr: IpAddr, allow_loopback: bool) -> bool {
    is_public_ip(addr) || (allow_loopback && is_loopback(addr))
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (seg[0] & 0xfe00) == 0xfc00 // unique local, incl. the EC2 metadata fd00:ec2::254
        || (seg[0] & 0xffc0) == 0xfe80 // link-local
        || (seg[0] & 0xffc0) == 0xfec0 // site-local (deprecated, still routed inside some sites)
        || (seg[0] == 0x2001 && seg[1] < 0x0200) // IETF protocol assignments, Teredo (2001::/32) among them
        || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
        || (seg[0] == 0x0064 && seg[1] == 0xff9b) // local-use NAT64 (64:ff9b:1::/48)
        || seg[0] == 0x0100 && seg[1..4] == [0, 0, 0] // discard-only
        || seg[..6] == [0; 6]) // IPv4-compatible (deprecated)
}

/// Checks a URL's IP-literal host at connect time (a name is checked by [`PublicResolver`], which
/// reqwest never consults for a literal).
pub fn check_target(url: &Url, allow_loopback: bool) -> Result<(), CallbackError> {
    let addr = match url.host() {
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
        Some(Host::Domain(_)) => return Ok(()),
        None => return Err(CallbackError::NoHost),
    };
    if may_connect(addr, allow_loopback) {
        Ok(())
    } else {
        Err(CallbackError::NotPublic {
            host: addr.to_string(),
            addr,
        })
    }
}

/// A DNS resolver for reqwest that hands out only addresses [`may_connect`] allows, so a name that
/// resolved to a public address at submit and to a private one now is refused at connect time.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublicResolver {
    pub allow_loopback: bool,
}

impl reqwest::dns::Resolve for PublicResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_loopback = self.allow_loopback;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let lookup = tokio::net::lookup_host((host.as_str(), 0));
            let found: Vec<SocketAddr> = tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
                .await
                .map_err(|_| format!("resolving {host} timed out"))??
                .collect();
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| may_connect(a.ip(), allow_loopback))
                .collect();
            if allowed.is_empty() {
                return Err(format!("{host} has no public address").into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_special_and_metadata_addresses_are_not_public() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "198.18.0.1",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2001:db8::1",
            // IPv6 forms that carry a private IPv4 address (6to4, IPv4-translated, ISATAP, NAT64), Teredo
            // and the deprecated site-local and IPv4-compatible spaces.
            "2002:a9fe:a9fe::",
            "2002:0a00:0001::",
            "2002:7f00:1::1",
            "::ffff:0:a9fe:a9fe",
            "::ffff:0:7f00:1",
            "2001::a9fe:a9fe",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "fec0::1",
            "fe80::5efe:a9fe:a9fe",
            "2606:4700::5efe:a00:1",
            "2606:4700::200:5efe:c0a8:101",
            "64:ff9b::7f00:1",
            "64:ff9b:1::808:808",
            "::a9fe:a9fe",
            "::8.8.8.8",
        ] {
            assert!(!is_public_ip(ip(bad)), "{bad} must not be public");
        }
        for good in [
            "93.184.215.14",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "2002:808:808::1",
            "64:ff9b::808:808",
            "2606:4700::5efe:808:808",
        ] {
            assert!(is_public_ip(ip(good)), "{good} is public");
        }
    }

    #[test]
    fn syntax_scheme_and_credentials_are_checked_first() {
        let long = format!("https://example.com/{}", "a".repeat(MAX_CALLBACK_URL_LEN));
        assert_eq!(parse(&long, false).unwrap_err(), CallbackError::TooLong);
        assert!(matches!(
            parse("not a url", false),
            Err(CallbackError::Malformed(_))
        ));
        assert_eq!(
            parse("http://example.com/hook", false).unwrap_err(),
            CallbackError::NotHttps
        );
        assert_eq!(
            parse("ftp://example.com/hook", true).unwrap_err(),
            CallbackError::NotHttps
        );
        assert_eq!(
            parse("https://user:pw@example.com/", false).unwrap_err(),
            CallbackError::Credentials
        );
        assert!(parse("https://example.com/hook?x=1", false).is_ok());
    }

    #[test]
    fn every_resolved_address_must_pass() {
        let public = ip("93.184.215.14");
        let private = ip("10.0.0.7");
        assert_eq!(check_addresses("h", &[public], false, false), Ok(()));
        assert!(matches!(
            check_addresses("h", &[public, private], false, false),
            Err(CallbackError::NotPublic { addr, .. }) if addr == private
        ));
        assert_eq!(
            check_addresses("h", &[], false, false),
            Err(CallbackError::Unresolvable("h".into()))
        );
    }

    #[test]
    fn dev_mode_allows_loopback_only_and_plain_http_only_to_loopback() {
        let lo = ip("127.0.0.1");
        assert!(check_addresses("l", &[lo], true, false).is_err());
        assert_eq!(check_addresses("l", &[lo], true, true), Ok(()));
        assert_eq!(check_addresses("l", &[lo], false, true), Ok(()));
        assert_eq!(
            check_addresses("p", &[ip("93.184.215.14")], true, true),
            Err(CallbackError::NotHttps)
        );
        assert!(check_addresses("p", &[ip("10.0.0.1")], false, true).is_err());
    }

    #[test]
    fn connect_time_checks_allow_loopback_only_when_asked() {
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(check_target(&url("https://[2002:a9fe:a9fe::]/"), false).is_err());
        assert!(check_target(&url("http://127.0.0.1:9/"), false).is_err());
        assert!(check_target(&url("http://127.0.0.1:9/"), true).is_ok());
        assert!(check_target(&url("http://[::ffff:127.0.0.1]:9/"), true).is_ok());
        assert!(check_target(&url("http://10.0.0.1/"), true).is_err());
        assert!(check_target(&url("https://93.184.215.14/"), false).is_ok());
        assert!(check_target(&url("https://example.com/"), false).is_ok());
    }

    #[tokio::test]
    async fn the_resolver_hands_out_only_allowed_addresses() {
        use reqwest::dns::Resolve;
        let name = |s: &str| s.parse::<reqwest::dns::Name>().unwrap();
        let strict = PublicResolver::default();
        assert!(strict.resolve(name("localhost")).await.is_err());
        let local = PublicResolver {
            allow_loopback: true,
        };
        let addrs: Vec<_> = local.resolve(name("localhost")).await.unwrap().collect();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
    }

    #[tokio::test]
    async fn names_are_resolved_and_unresolvable_ones_rejected() {
        assert!(matches!(
            validate("https://localhost:8443/hook", false).await,
            Err(CallbackError::NotPublic { .. })
        ));
        assert!(validate("http://localhost:9000/hook", true).await.is_ok());
        assert!(matches!(
            validate("https://no-such-host.invalid/hook", false).await,
            Err(CallbackError::Unresolvable(_))
        ));
        assert!(validate("https://93.184.215.14/hook", false).await.is_ok());
    }
}
