//! SpiceDB's `ipaddress` CEL type and its member function `ip.in_cidr("10.0.0.0/8")`.
//!
//! An opaque value ([`IpAddress`]) registered in every evaluation context; prefix parsing and
//! containment follow Go's `netip.ParsePrefix` / `Prefix.Contains` (an IPv4 address is never
//! inside an IPv6 prefix, nor the reverse).

use std::net::IpAddr;
use std::sync::Arc;

use ::cel::extractors::This;
use ::cel::objects::Opaque;
use ::cel::{ExecutionError, Value};

/// SpiceDB's `ipaddress` parameter type: an IPv4 or IPv6 address, and the zone of an IPv6
/// address written `fe80::1%eth0` (as Go's `netip.Addr`; a zoned address is in no prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpAddress {
    /// the address
    pub ip: IpAddr,
    /// the IPv6 zone, if any
    pub zone: Option<String>,
}

impl IpAddress {
    /// Parses an address as Go's `netip.ParseAddr`.
    pub fn parse(s: &str) -> Option<IpAddress> {
        match s.split_once('%') {
            Some((addr, zone)) if !zone.is_empty() => Some(IpAddress {
                ip: IpAddr::V6(addr.parse().ok()?),
                zone: Some(zone.to_string()),
            }),
            Some(_) => None,
            None => Some(IpAddress {
                ip: s.parse().ok()?,
                zone: None,
            }),
        }
    }
}

impl Opaque for IpAddress {
    fn runtime_type_name(&self) -> &str {
        "ipaddress"
    }
}

/// `ip.in_cidr("10.0.0.0/8")`: is the address inside the prefix?
pub(super) fn in_cidr(This(this): This<Value>, cidr: Arc<String>) -> Result<Value, ExecutionError> {
    let ip = match &this {
        Value::Opaque(o) => o.downcast_ref::<IpAddress>(),
        _ => None,
    };
    let Some(ip) = ip else {
        return Err(ExecutionError::no_such_member_overload(
            "in_cidr",
            vec![this.type_of().to_string(), "string".to_string()],
        ));
    };
    let (net, bits) = parse_prefix(&cidr).ok_or_else(|| {
        ExecutionError::function_error("in_cidr", format!("invalid CIDR string: `{cidr}`"))
    })?;
    Ok(Value::Bool(
        ip.zone.is_none() && prefix_contains(net, bits, ip.ip),
    ))
}

/// Parses `addr/bits` as Go's `netip.ParsePrefix`: the bits are decimal without sign or
/// leading zeros, at most 32 (IPv4) or 128 (IPv6).
fn parse_prefix(s: &str) -> Option<(IpAddr, u32)> {
    let (addr, bits) = s.rsplit_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    if bits.is_empty()
        || !bits.bytes().all(|b| b.is_ascii_digit())
        || (bits.len() > 1 && bits.starts_with('0'))
    {
        return None;
    }
    let bits: u32 = bits.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some((addr, bits))
}

/// Is `ip` in the prefix `net/bits`? Never across address families.
fn prefix_contains(net: IpAddr, bits: u32, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::cel::testing::*;
    use serde_json::json;

    #[test]
    fn ipaddress_in_cidr() {
        let c = caveat(&[("ip", T::IpAddress)], "ip.in_cidr('10.0.0.0/8')");
        assert_eq!(eval(&c, json!({"ip": "10.1.2.3"})), t());
        assert_eq!(eval(&c, json!({"ip": "11.1.2.3"})), f());
        assert_eq!(eval(&c, json!({"ip": "::ffff:10.0.0.1"})), f());
        assert_eq!(eval(&c, json!({"ip": "fe80::1%eth0"})), f());
        assert!(eval(&c, json!({"ip": "010.0.0.1"})).is_err());
        assert!(eval(&c, json!({"ip": "10.0.0.1%eth0"})).is_err());
        assert_eq!(eval(&c, json!({})), missing(&["ip"]));
        assert!(eval(&c, json!({"ip": "nope"})).is_err());
        assert!(eval(&c, json!({"ip": 5})).is_err());

        let c = caveat(
            &[("ip", T::IpAddress), ("net", T::String)],
            "ip.in_cidr(net)",
        );
        let check = |ip: &str, net: &str| eval(&c, json!({"ip": ip, "net": net}));
        assert_eq!(check("2001:db8::1", "2001:db8::/32"), t());
        assert_eq!(check("2001:db9::1", "2001:db8::/32"), f());
        assert_eq!(check("10.0.0.1", "10.0.0.5/24"), t());
        assert_eq!(check("10.0.0.1", "0.0.0.0/0"), t());
        assert_eq!(check("10.0.0.1", "::/0"), f());
        assert_eq!(check("10.0.0.1", "10.0.0.1/32"), t());
        assert_eq!(check("10.0.0.2", "10.0.0.1/32"), f());
        for bad in [
            "bad",
            "10.0.0.0/33",
            "10.0.0.0/08",
            "10.0.0.0/",
            "10.0.0.0/+8",
        ] {
            assert!(check("10.0.0.1", bad).is_err(), "{bad}");
        }
        // equality of addresses
        let c = caveat(&[("a", T::IpAddress), ("b", T::IpAddress)], "a == b");
        assert_eq!(eval(&c, json!({"a": "10.0.0.1", "b": "10.0.0.1"})), t());
        assert_eq!(eval(&c, json!({"a": "10.0.0.1", "b": "10.0.0.2"})), f());
    }
}
