//! Fuzz target: the PROXY header parser. Never panics, never claims more
//! octets than it was given or than the protocol allows, and decides
//! monotonically: every prefix of a complete header is Incomplete or the
//! same header, and more bytes after a complete header change nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailbag_proto::proxy::{self, Parsed, V1_MAX_OCTETS, V2_MAX_OCTETS};

fuzz_target!(|data: &[u8]| {
    let parsed = proxy::parse(data);
    match &parsed {
        Parsed::Done { octets, .. } => {
            let octets = *octets;
            assert!(octets <= data.len());
            assert!(octets > 0);
            assert!(octets <= V1_MAX_OCTETS.max(V2_MAX_OCTETS));
            for end in 0..octets {
                let prefix = proxy::parse(&data[..end]);
                assert!(
                    prefix == Parsed::Incomplete || prefix == parsed,
                    "prefix of {end} octets: {prefix:?}, whole: {parsed:?}"
                );
            }
            // The header alone is the same header.
            assert_eq!(proxy::parse(&data[..octets]), parsed);
        }
        Parsed::Incomplete => {
            // Never asks for more than a header can hold.
            assert!(data.len() < V1_MAX_OCTETS.max(V2_MAX_OCTETS));
        }
        Parsed::Invalid(why) => assert!(!why.is_empty()),
    }
    let mut longer = data.to_vec();
    longer.extend_from_slice(b"USER x\r\n");
    let after = proxy::parse(&longer);
    match &parsed {
        Parsed::Done { .. } | Parsed::Invalid(_) => assert_eq!(after, parsed),
        Parsed::Incomplete => {}
    }
});
