//! The PROXY protocol header (HAProxy's `proxy-protocol.txt`, versions 1
//! and 2), which a load balancer sends first so that the server learns the
//! real client address.
//!
//! [`parse`] looks at the first bytes of a connection and says whether a
//! complete header is there, how long it is, and what it says. It never
//! reads past the header, never trusts a length field beyond the protocol's
//! limits, and never panics. Whether to accept a header at all (only from
//! trusted balancers) is the driver's decision. No IO.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Version 1 headers are at most 107 octets, CRLF included.
pub const V1_MAX_OCTETS: usize = 107;
/// The version 2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A version 2 header with its TLVs; longer ones are refused rather than
/// buffered (addresses need at most 216 octets; TLVs rarely add much).
pub const V2_MAX_OCTETS: usize = 16 + 1024;

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A proxied TCP connection: the client's and the proxy's addresses.
    Proxied {
        /// The original client.
        source: SocketAddr,
        /// The address the client connected to.
        destination: SocketAddr,
    },
    /// The proxy's own connection (a health check) or an address family
    /// the header does not carry: keep the socket's own addresses.
    Local,
}

/// The result of looking at the start of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed to decide.
    Incomplete,
    /// A complete header of `octets` octets.
    Done {
        /// What it says.
        header: Header,
        /// Its length: the bytes after it belong to the protocol proper.
        octets: usize,
    },
    /// Not a valid PROXY header.
    Invalid(&'static str),
}

/// Parses a PROXY header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    let sig_len = buf.len().min(V2_SIGNATURE.len());
    if buf[..sig_len] == V2_SIGNATURE[..sig_len] {
        if buf.len() < 16 {
            return Parsed::Incomplete;
        }
        return parse_v2(buf);
    }
    let prefix = b"PROXY ";
    let n = buf.len().min(prefix.len());
    if buf[..n] != prefix[..n] {
        return Parsed::Invalid("no PROXY header");
    }
    parse_v1(buf)
}

fn parse_v1(buf: &[u8]) -> Parsed {
    let window = &buf[..buf.len().min(V1_MAX_OCTETS)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX_OCTETS {
            Parsed::Invalid("PROXY v1 header too long")
        } else {
            Parsed::Incomplete
        };
    };
    if lf == 0 || window[lf - 1] != b'\r' {
        return Parsed::Invalid("PROXY v1 header must end with CRLF");
    }
    let Ok(line) = std::str::from_utf8(&window[..lf - 1]) else {
        return Parsed::Invalid("PROXY v1 header is not text");
    };
    let words: Vec<&str> = line.split(' ').collect();
    let header = match words.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Header::Local,
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let v4 = *family == "TCP4";
            let (Some(src), Some(dst)) = (v1_ip(src, v4), v1_ip(dst, v4)) else {
                return Parsed::Invalid("PROXY v1 address does not match its family");
            };
            let (Some(sport), Some(dport)) = (v1_port(sport), v1_port(dport)) else {
                return Parsed::Invalid("PROXY v1 port is not a number from 0 to 65535");
            };
            Header::Proxied {
                source: SocketAddr::new(src, sport),
                destination: SocketAddr::new(dst, dport),
            }
        }
        _ => return Parsed::Invalid("malformed PROXY v1 header"),
    };
    Parsed::Done {
        header,
        octets: lf + 1,
    }
}

fn v1_ip(s: &str, v4: bool) -> Option<IpAddr> {
    if v4 {
        s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    } else {
        s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    }
}

fn v1_port(s: &str) -> Option<u16> {
    // No sign, no leading zeros beyond "0" itself, as the spec asks.
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

fn parse_v2(buf: &[u8]) -> Parsed {
    let ver_cmd = buf[12];
    let family = buf[13];
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if ver_cmd >> 4 != 2 {
        return Parsed::Invalid("PROXY v2 header with an unknown version");
    }
    if 16 + len > V2_MAX_OCTETS {
        return Parsed::Invalid("PROXY v2 header too long");
    }
    if buf.len() < 16 + len {
        return Parsed::Incomplete;
    }
    let body = &buf[16..16 + len];
    let octets = 16 + len;
    let header = match ver_cmd & 0x0f {
        // LOCAL: the proxy speaking for itself; addresses are ignored.
        0 => Header::Local,
        1 => match family {
            // TCP over IPv4, then TCP over IPv6.
            0x11 => {
                if body.len() < 12 {
                    return Parsed::Invalid("PROXY v2 length too short for IPv4 addresses");
                }
                let ip = |o: usize| {
                    IpAddr::V4(Ipv4Addr::new(
                        body[o],
                        body[o + 1],
                        body[o + 2],
                        body[o + 3],
                    ))
                };
                let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
                Header::Proxied {
                    source: SocketAddr::new(ip(0), port(8)),
                    destination: SocketAddr::new(ip(4), port(10)),
                }
            }
            0x21 => {
                if body.len() < 36 {
                    return Parsed::Invalid("PROXY v2 length too short for IPv6 addresses");
                }
                let ip = |o: usize| {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(&body[o..o + 16]);
                    IpAddr::V6(Ipv6Addr::from(a))
                };
                let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
                Header::Proxied {
                    source: SocketAddr::new(ip(0), port(32)),
                    destination: SocketAddr::new(ip(16), port(34)),
                }
            }
            // UNSPEC, UDP or Unix sockets: nothing usable to replace ours.
            _ => Header::Local,
        },
        _ => return Parsed::Invalid("PROXY v2 header with an unknown command"),
    };
    Parsed::Done { header, octets }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_headers() {
        let h = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 110\r\nUSER a\r\n";
        assert_eq!(
            parse(h),
            Parsed::Done {
                header: Header::Proxied {
                    source: addr("192.0.2.7:56324"),
                    destination: addr("198.51.100.1:110")
                },
                octets: 45
            }
        );
        let h = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 995\r\n";
        assert!(
            matches!(parse(h), Parsed::Done { header: Header::Proxied { .. }, octets } if octets == h.len())
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Done {
                header: Header::Local,
                octets: 15
            }
        );
    }

    #[test]
    fn v1_incomplete_at_every_split() {
        let h = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 110\r\n";
        for n in 0..h.len() {
            assert_eq!(parse(&h[..n]), Parsed::Incomplete, "{n}");
        }
    }

    #[test]
    fn v1_malformed() {
        for h in [
            &b"PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n"[..],
            b"PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 1\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 -1 1\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 01 1\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1 1\n",
            b"PROXY SCTP a b 1 2\r\n",
            b"USER alice\r\n",
            b"GET / HTTP/1.0\r\n",
        ] {
            assert!(
                matches!(parse(h), Parsed::Invalid(_)),
                "{:?}",
                String::from_utf8_lossy(h)
            );
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert!(matches!(parse(&long), Parsed::Invalid(_)));
    }

    fn v2(cmd: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | cmd);
        h.push(family);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    #[test]
    fn v2_headers() {
        let body = [192, 0, 2, 7, 198, 51, 100, 1, 0xdc, 0x04, 0, 110];
        let mut h = v2(1, 0x11, &body);
        let len = h.len();
        h.extend_from_slice(b"USER a\r\n");
        assert_eq!(
            parse(&h),
            Parsed::Done {
                header: Header::Proxied {
                    source: addr("192.0.2.7:56324"),
                    destination: addr("198.51.100.1:110")
                },
                octets: len
            }
        );
        let mut body6 = [0u8; 36];
        body6[15] = 1;
        body6[31] = 2;
        body6[32..34].copy_from_slice(&4000u16.to_be_bytes());
        body6[34..36].copy_from_slice(&995u16.to_be_bytes());
        assert_eq!(
            parse(&v2(1, 0x21, &body6)),
            Parsed::Done {
                header: Header::Proxied {
                    source: addr("[::1]:4000"),
                    destination: addr("[::2]:995")
                },
                octets: 52
            }
        );
        // LOCAL, and TLVs after the addresses are skipped.
        assert_eq!(
            parse(&v2(0, 0x00, &[])),
            Parsed::Done {
                header: Header::Local,
                octets: 16
            }
        );
        let mut with_tlv = body.to_vec();
        with_tlv.extend_from_slice(&[0x04, 0, 1, 0]);
        assert!(matches!(
            parse(&v2(1, 0x11, &with_tlv)),
            Parsed::Done { octets: 32, .. }
        ));
    }

    #[test]
    fn v2_lying_lengths_and_garbage() {
        // Too short for the family's addresses.
        assert!(matches!(
            parse(&v2(1, 0x11, &[1, 2, 3])),
            Parsed::Invalid(_)
        ));
        assert!(matches!(parse(&v2(1, 0x21, &[0; 12])), Parsed::Invalid(_)));
        // A length far beyond any real header is refused, not awaited.
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(parse(&h), Parsed::Invalid(_)));
        // Wrong version, unknown command.
        let mut h = v2(1, 0x11, &[0; 12]);
        h[12] = 0x11;
        assert!(matches!(parse(&h), Parsed::Invalid(_)));
        let mut h = v2(1, 0x11, &[0; 12]);
        h[12] = 0x2f;
        assert!(matches!(parse(&h), Parsed::Invalid(_)));
        // Every prefix of a valid header is incomplete, never invalid.
        let h = v2(1, 0x11, &[0; 12]);
        for n in 0..h.len() {
            assert_eq!(parse(&h[..n]), Parsed::Incomplete, "{n}");
        }
    }
}
