//! Which addresses the server itself may connect to (remote `file` URLs, upload mappings,
//! `urls` of sprites and multis, webhooks), checked on every connection after DNS resolution:
//! the HTTP clients resolve names through [`PolicyResolver`], which hands the connector only
//! allowed addresses (so nothing changes between the check and the connection), and check
//! every redirect's target. IP literals never reach a resolver: they are checked on every hop.
//!
//! Fetches refuse loopback, private, link-local, cloud-metadata and other special ranges unless
//! the deployment allows them (`--allow-fetch-from` / `NEPHOS_ALLOW_FETCH_FROM`: CIDRs and host
//! names). Webhooks may reach loopback and private networks (a local receiver is the normal
//! case, and their answers are never read), never link-local or metadata addresses unless
//! allowed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// The switch that opens addresses, named in every refusal.
pub const SWITCH: &str = "--allow-fetch-from / NEPHOS_ALLOW_FETCH_FROM";

/// Marks errors of the policy, so that callers can tell them from network failures.
pub const REFUSED: &str = "refused by the fetch policy";

/// What a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Reading a file a client named: only public addresses by default.
    Fetch,
    /// Sending a notification: loopback and private networks too.
    Webhook,
}

/// Networks and host names a deployment opens.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    nets: Vec<(IpAddr, u8)>,
    hosts: Vec<String>,
}

impl AllowList {
    /// Parses `127.0.0.0/8`, `::1/128`, `10.1.2.3` (a single address) or a host name.
    pub fn parse(items: &[String]) -> Result<AllowList, String> {
        let mut list = AllowList::default();
        for item in items.iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
            let (addr, len) = match item.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (item, None),
            };
            match addr.trim_matches(['[', ']']).parse::<IpAddr>() {
                Ok(ip) => {
                    let max = if ip.is_ipv4() { 32 } else { 128 };
                    let len = match len {
                        Some(l) => l
                            .parse::<u8>()
                            .ok()
                            .filter(|l| *l <= max)
                            .ok_or_else(|| format!("invalid network {item}"))?,
                        None => max,
                    };
                    list.nets.push((ip, len));
                }
                Err(_) if len.is_none() && valid_host(item) => {
                    list.hosts.push(item.to_ascii_lowercase())
                }
                Err(_) => return Err(format!("invalid network or host name {item}")),
            }
        }
        Ok(list)
    }

    fn has_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.contains(&host)
    }

    fn has_ip(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|(net, len)| in_net(ip, *net, *len))
    }
}

fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    // An IPv6 network is compared with the address as written; an IPv4 one with the IPv4
    // address an IPv6 form stands for.
    let ip = if net.is_ipv4() { canonical(ip) } else { ip };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len.min(32)))
            };
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len.min(128)))
            };
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// IPv4 addresses written as IPv6 (mapped, compatible, NAT64, 6to4) are their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                IpAddr::V4(Ipv4Addr::new(
                    (hi >> 8) as u8,
                    hi as u8,
                    (lo >> 8) as u8,
                    lo as u8,
                ))
            };
            // NAT64 (64:ff9b::/96, and the local 64:ff9b:1::/48 with the address last), SIIT
            // (::ffff:0:a.b.c.d) and IPv4-compatible (::a.b.c.d, not :: or ::1).
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
                || s[..3] == [0x64, 0xff9b, 1]
                || s[..6] == [0, 0, 0, 0, 0xffff, 0]
            {
                return embedded(s[6], s[7]);
            }
            if s[..6] == [0; 6] && u32::from(s[6]) << 16 | u32::from(s[7]) > 1 {
                return embedded(s[6], s[7]);
            }
            // 6to4 (2002:a.b.c.d::/48).
            if s[0] == 0x2002 {
                return embedded(s[1], s[2]);
            }
            ip
        }
        v4 => v4,
    }
}

/// The kind of special address `ip` is, if it is one.
pub fn special(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if o == [169, 254, 169, 254]
                || o == [100, 100, 100, 200]
                || o == [168, 63, 129, 16]
            {
                Some("cloud metadata")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.is_private() || (o[0] == 100 && (64..128).contains(&o[1])) {
                Some("private")
            } else if o[0] == 0
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] >= 240
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (18..20).contains(&o[1]))
            {
                Some("reserved")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("cloud metadata")
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfec0 {
                Some("private")
            } else if v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] == 0x2001 && s[1] == 0xdb8)
                // Teredo and the other IETF protocol assignments (2001::/23).
                || (s[0] == 0x2001 && s[1] < 0x200)
                || (s[0] == 0x100 && s[1..4] == [0, 0, 0])
            {
                Some("reserved")
            } else {
                None
            }
        }
    }
}

/// Whether a connection to `ip` (for `host`) is allowed; the refusal says why.
pub fn check_ip(ip: IpAddr, host: &str, purpose: Purpose, allow: &AllowList) -> Result<(), String> {
    if allow.has_ip(ip) || allow.has_host(host) {
        return Ok(());
    }
    match (special(ip), purpose) {
        (None, _) => Ok(()),
        (Some("loopback" | "private"), Purpose::Webhook) => Ok(()),
        (Some(kind), _) => Err(format!(
            "{host} resolves to a {kind} address ({ip}), {REFUSED}; allow it with {SWITCH}"
        )),
    }
}

/// Checks what can be checked of a URL before connecting: the scheme, no credentials in it,
/// and a literal IP address.
pub fn check_url(url: &reqwest::Url, purpose: Purpose, allow: &AllowList) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "{} URLs are not fetched ({REFUSED}): only http and https",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("URLs with credentials are {REFUSED}"));
    }
    match url.host() {
        Some(url::Host::Ipv4(ip)) => check_ip(IpAddr::V4(ip), &ip.to_string(), purpose, allow),
        Some(url::Host::Ipv6(ip)) => check_ip(IpAddr::V6(ip), &ip.to_string(), purpose, allow),
        Some(url::Host::Domain(_)) => Ok(()),
        None => Err(format!("URLs without a host are {REFUSED}")),
    }
}

/// Resolves names for the HTTP clients, keeping only allowed addresses.
struct PolicyResolver {
    purpose: Purpose,
    allow: Arc<AllowList>,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (purpose, allow) = (self.purpose, self.allow.clone());
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refusal = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match check_ip(a.ip(), &host, purpose, &allow) {
                    Ok(()) => true,
                    Err(why) => {
                        refusal = Some(why);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = refusal.unwrap_or_else(|| format!("{host} has no address"));
                return Err(why.into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// An HTTP client whose every connection follows the policy for `purpose`.
pub fn client(
    purpose: Purpose,
    allow: Arc<AllowList>,
    timeout: Duration,
    max_redirects: usize,
) -> reqwest::Result<reqwest::Client> {
    let redirect_allow = allow.clone();
    let redirects = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > max_redirects {
            return attempt.error(format!("too many redirects (at most {max_redirects})"));
        }
        match check_url(attempt.url(), purpose, &redirect_allow) {
            Ok(()) => attempt.follow(),
            Err(why) => attempt.error(why),
        }
    });
    reqwest::Client::builder()
        // A proxy would resolve names itself, out of the policy's reach.
        .no_proxy()
        .dns_resolver(Arc::new(PolicyResolver { purpose, allow }))
        .redirect(redirects)
        .timeout(timeout)
        .user_agent(concat!("nephos/", env!("CARGO_PKG_VERSION")))
        // The bundled web PKI roots, as always: the system's store (which the object store
        // client enables in the shared reqwest build) takes milliseconds to load at start.
        .tls_built_in_native_certs(false)
        .build()
}

/// The policy's refusal in an error chain, if that is what the error is.
pub fn refusal(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        if text.contains(REFUSED) {
            return Some(text);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn special_ranges_are_recognised() {
        for (addr, kind) in [
            ("127.0.0.1", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "cloud metadata"),
            ("169.254.169.254", "cloud metadata"),
            ("fd00:ec2::254", "cloud metadata"),
            ("169.254.1.1", "link-local"),
            ("fe80::1", "link-local"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "private"),
            ("fc00::1", "private"),
            ("0.0.0.0", "reserved"),
            ("::", "reserved"),
            ("224.0.0.1", "reserved"),
            ("2002:7f00:1::", "loopback"),
            ("::ffff:0:7f00:1", "loopback"),
            ("64:ff9b:1::a9fe:a9fe", "cloud metadata"),
            ("fec0::1", "private"),
            ("2001::1", "reserved"),
            ("168.63.129.16", "cloud metadata"),
        ] {
            assert_eq!(special(ip(addr)), Some(kind), "{addr}");
        }
        for public in ["93.184.216.34", "2606:4700::1111", "8.8.8.8"] {
            assert_eq!(special(ip(public)), None, "{public}");
        }
    }

    #[test]
    fn purposes_and_allow_lists() {
        let none = AllowList::default();
        assert!(check_ip(ip("127.0.0.1"), "h", Purpose::Fetch, &none).is_err());
        assert!(check_ip(ip("127.0.0.1"), "h", Purpose::Webhook, &none).is_ok());
        assert!(check_ip(ip("169.254.169.254"), "h", Purpose::Webhook, &none).is_err());
        let allow =
            AllowList::parse(&["127.0.0.0/8".into(), "::1/128".into(), "devbox".into()]).unwrap();
        assert!(check_ip(ip("127.9.9.9"), "h", Purpose::Fetch, &allow).is_ok());
        assert!(check_ip(ip("::1"), "h", Purpose::Fetch, &allow).is_ok());
        assert!(check_ip(ip("10.0.0.1"), "devbox", Purpose::Fetch, &allow).is_ok());
        assert!(check_ip(ip("10.0.0.1"), "other", Purpose::Fetch, &allow).is_err());
        assert!(AllowList::parse(&["10.0.0.0/33".into()]).is_err());
        // An IPv6 network is not read as an IPv4 one (64:ff9b::/96 is not 0.0.0.0/32).
        let nat64 = AllowList::parse(&["64:ff9b::/96".into()]).unwrap();
        assert!(check_ip(ip("0.0.0.0"), "h", Purpose::Fetch, &nat64).is_err());
        assert!(check_ip(ip("64:ff9b::808:808"), "h", Purpose::Fetch, &nat64).is_ok());
        assert!(AllowList::parse(&["not a host!".into()]).is_err());
    }

    #[test]
    fn urls_are_checked_before_connecting() {
        let none = AllowList::default();
        for bad in [
            "file:///etc/passwd",
            "gopher://x/",
            "http://user:pw@example.com/",
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://[::ffff:169.254.169.254]/",
        ] {
            let url = reqwest::Url::parse(bad).unwrap();
            assert!(check_url(&url, Purpose::Fetch, &none).is_err(), "{bad}");
        }
        let ok = reqwest::Url::parse("https://example.com/a.png").unwrap();
        assert!(check_url(&ok, Purpose::Fetch, &none).is_ok());
    }
}
