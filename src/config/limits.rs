//! The `[limits]` section: per-client request rate limits, request body timeouts and
//! the per-client connection cap ([`LimitsConfig`]), and [`IpNet`], the CIDR block type
//! of its `trusted_proxies` and `allow` lists.

use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::base::ConfigError;
use super::merge::Origins;
use super::units::{format_duration, format_size, parse_duration, parse_size};

/// The largest `limits.max_connections_per_client` (as `server.max_connections`).
pub const MAX_CONNECTIONS_PER_CLIENT: usize = 10_000_000;

/// Request rate limits per client, in two separate quotas; how slow a request body may
/// be; how many connections one client address may hold open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    pub enabled: bool,
    /// Manifest, tag list, referrers and catalog requests.
    pub manifests: Rate,
    /// Blob and upload requests.
    pub blobs: Rate,
    /// Peers whose `X-Forwarded-For` header is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Clients that are never limited.
    pub allow: Vec<IpNet>,
    /// A request body that sends no bytes for this long while the server waits for
    /// them is cut; also the window `body_min_rate` is averaged over.
    pub body_idle_timeout: Duration,
    /// Bytes per second a request body must average over each `body_idle_timeout` of
    /// waiting; 0 = no floor.
    pub body_min_rate: u64,
    /// Open connections one client address may hold (checked at accept, before any
    /// request is read); 0 = no cap. `allow` and `trusted_proxies` are exempt.
    pub max_connections_per_client: usize,
}

/// A sustained rate and the burst allowed on top of it (a token bucket of `burst`
/// tokens refilled at `per_second`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl Rate {
    /// `Rate::new(50, 200)`; zero becomes one.
    pub fn new(per_second: u32, burst: u32) -> Rate {
        let nz = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        Rate {
            per_second: nz(per_second),
            burst: nz(burst),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        LimitsConfig {
            enabled: true,
            manifests: Rate::new(50, 200),
            blobs: Rate::new(100, 400),
            trusted_proxies: Vec::new(),
            allow: vec![
                IpNet::new(IpAddr::from([127, 0, 0, 1]), 8),
                IpNet::new(IpAddr::from(std::net::Ipv6Addr::LOCALHOST), 128),
            ],
            body_idle_timeout: Duration::from_secs(30),
            body_min_rate: 1024,
            max_connections_per_client: 256,
        }
    }
}

/// A CIDR block such as `10.0.0.0/8` or `fd00::/8`; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// The block of `prefix` leading bits of `addr` (host bits are cleared; a prefix
    /// longer than the address is shortened to its length).
    pub fn new(addr: IpAddr, prefix: u8) -> IpNet {
        let max = max_prefix(addr);
        let prefix = prefix.min(max);
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & mask32(prefix)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask128(prefix)).into()),
        };
        IpNet { addr, prefix }
    }

    /// Parses `a.b.c.d/n`, `x::y/n` or a bare address.
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let bad = || format!("invalid IP address or CIDR block {s:?}");
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix = match prefix {
            None => max_prefix(addr),
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max_prefix(addr) => n,
                _ => return Err(bad()),
            },
        };
        let net = IpNet::new(addr, prefix);
        match net.addr == addr {
            true => Ok(net),
            false => Err(format!(
                "{s:?} has host bits set: write {net} for the block, or the address alone"
            )),
        }
    }

    /// Whether `ip` is inside the block; an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
    /// counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                u32::from(a) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                u128::from(a) & mask128(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

// The file schema (`Serialize` renders the effective config).

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    enabled: bool,
    manifests_per_second: i64,
    manifests_burst: i64,
    blobs_per_second: i64,
    blobs_burst: i64,
    trusted_proxies: Vec<String>,
    allow: Vec<String>,
    body_idle_timeout: String,
    body_min_rate: String,
    max_connections_per_client: i64,
}

/// The section as `config show` writes it.
pub(super) fn show_limits(l: &LimitsConfig) -> RawLimits {
    let n = |v: NonZeroU32| i64::from(v.get());
    let nets = |v: &[IpNet]| v.iter().map(IpNet::to_string).collect();
    RawLimits {
        enabled: l.enabled,
        manifests_per_second: n(l.manifests.per_second),
        manifests_burst: n(l.manifests.burst),
        blobs_per_second: n(l.blobs.per_second),
        blobs_burst: n(l.blobs.burst),
        trusted_proxies: nets(&l.trusted_proxies),
        allow: nets(&l.allow),
        body_idle_timeout: format_duration(l.body_idle_timeout),
        body_min_rate: format_size(l.body_min_rate),
        max_connections_per_client: i64::try_from(l.max_connections_per_client).unwrap_or(i64::MAX),
    }
}

/// Types and validates `[limits]`: rates are whole requests per second from 1 up,
/// bursts at least 1, every list entry an address or CIDR block, the body timeout
/// above 0, the connection cap from 0 (off) to [`MAX_CONNECTIONS_PER_CLIENT`].
pub(super) fn build_limits(raw: RawLimits, o: &Origins) -> Result<LimitsConfig, ConfigError> {
    let count = |key: &str, v: i64| {
        let n = u32::try_from(v)
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or_else(|| format!("{v} is not a whole number from 1 to {}", u32::MAX));
        o.check(key, n)
    };
    let nets = |key: &str, list: &[String]| {
        let parse = |(i, s): (usize, &String)| o.check(&format!("{key}[{i}]"), IpNet::parse(s));
        list.iter()
            .enumerate()
            .map(parse)
            .collect::<Result<Vec<_>, _>>()
    };
    let body_idle = parse_duration(&raw.body_idle_timeout).and_then(|d| match d.is_zero() {
        true => Err("must be greater than 0".to_string()),
        false => Ok(d),
    });
    let per_client = usize::try_from(raw.max_connections_per_client)
        .ok()
        .filter(|n| *n <= MAX_CONNECTIONS_PER_CLIENT)
        .ok_or_else(|| {
            format!(
                "{} is not a whole number from 0 to {MAX_CONNECTIONS_PER_CLIENT}",
                raw.max_connections_per_client
            )
        });
    Ok(LimitsConfig {
        enabled: raw.enabled,
        manifests: Rate {
            per_second: count("limits.manifests_per_second", raw.manifests_per_second)?,
            burst: count("limits.manifests_burst", raw.manifests_burst)?,
        },
        blobs: Rate {
            per_second: count("limits.blobs_per_second", raw.blobs_per_second)?,
            burst: count("limits.blobs_burst", raw.blobs_burst)?,
        },
        trusted_proxies: nets("limits.trusted_proxies", &raw.trusted_proxies)?,
        allow: nets("limits.allow", &raw.allow)?,
        body_idle_timeout: o.check("limits.body_idle_timeout", body_idle)?,
        body_min_rate: o.check("limits.body_min_rate", parse_size(&raw.body_min_rate))?,
        max_connections_per_client: o.check("limits.max_connections_per_client", per_client)?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        super::super::tests::load_at(text, "/x.toml", env)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_matches_the_embedded_file() {
        assert_eq!(load("", &[]).unwrap().limits, LimitsConfig::default());
    }

    #[test]
    fn cidr_blocks_parse_and_match() {
        let net = IpNet::parse("10.1.0.0/16").unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")));
        assert!(!net.contains(ip("fd00::1")));
        let one = IpNet::parse("192.0.2.7").unwrap();
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6 = IpNet::parse("fd00::/8").unwrap();
        assert!(v6.contains(ip("fdab::1")) && !v6.contains(ip("fe80::1")));
        assert!(IpNet::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(IpNet::parse("::/0").unwrap().contains(ip("2001:db8::1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0/8",
            "10.0.0.0/x",
            "host",
        ] {
            assert!(IpNet::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            IpNet::parse("10.1.2.3/8").unwrap_err(),
            "\"10.1.2.3/8\" has host bits set: write 10.0.0.0/8 for the block, or the address alone"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                "limits.manifests_per_second = 0",
                "config /x.toml: key limits.manifests_per_second: 0 is not a whole number from 1 to 4294967295",
            ),
            (
                "limits.blobs_burst = -5",
                "config /x.toml: key limits.blobs_burst: -5 is not a whole number from 1 to 4294967295",
            ),
            (
                "limits.allow = [\"127.0.0.0/8\", \"nope\"]",
                "config /x.toml: key limits.allow[1]: invalid IP address or CIDR block \"nope\"",
            ),
            (
                "limits.trusted_proxies = [\"10.0.0.0/40\"]",
                "config /x.toml: key limits.trusted_proxies[0]: invalid IP address or CIDR block \"10.0.0.0/40\"",
            ),
            (
                "limits.body_idle_timeout = \"0s\"",
                "config /x.toml: key limits.body_idle_timeout: must be greater than 0",
            ),
            (
                "limits.body_idle_timeout = \"30\"",
                "config /x.toml: key limits.body_idle_timeout: invalid duration \"30\": add a unit (ms, s, m, h, d, w)",
            ),
            (
                "limits.body_min_rate = \"fast\"",
                "config /x.toml: key limits.body_min_rate: invalid size \"fast\": expected a number and a unit, e.g. \"4MiB\"",
            ),
            (
                "limits.max_connections_per_client = -1",
                "config /x.toml: key limits.max_connections_per_client: -1 is not a whole number from 0 to 10000000",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(load(text, &[]).unwrap_err(), want, "{text}");
        }
        let typo = load("[limits]\nmanifest_burst = 3\n", &[]).unwrap_err();
        assert!(typo.contains("limits.manifest_burst"), "{typo}");
        assert_eq!(
            load("", &[("AGENT_REGISTRY_LIMITS_BLOBS_PER_SECOND", "0")]).unwrap_err(),
            "environment AGENT_REGISTRY_LIMITS_BLOBS_PER_SECOND: key limits.blobs_per_second: 0 is not a whole number from 1 to 4294967295"
        );
    }

    #[test]
    fn shown_config_reads_back_and_env_overrides_apply() {
        let env = [
            ("AGENT_REGISTRY_LIMITS_ENABLED", "false"),
            ("AGENT_REGISTRY_LIMITS_TRUSTED_PROXIES", "[\"10.0.0.0/8\"]"),
        ];
        let text = "[limits]\nmanifests_burst = 7\nallow = []\nbody_idle_timeout = \"1m30s\"\n\
                    body_min_rate = \"0\"\nmax_connections_per_client = 0\n";
        let c = load(text, &env).unwrap();
        assert_eq!(c.limits.body_idle_timeout, Duration::from_secs(90));
        assert_eq!(c.limits.body_min_rate, 0);
        assert_eq!(c.limits.max_connections_per_client, 0);
        assert!(!c.limits.enabled);
        assert_eq!(c.limits.manifests, Rate::new(50, 7));
        assert_eq!(
            c.limits.trusted_proxies,
            vec![IpNet::parse("10.0.0.0/8").unwrap()]
        );
        assert!(c.limits.allow.is_empty());
        let back = Config::from_toml_str(&c.to_toml_redacted(), "shown", &|_| None).unwrap();
        assert_eq!(back.limits, c.limits);
    }
}
