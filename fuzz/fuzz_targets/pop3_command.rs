//! Fuzz target: the POP3 command parser on any line. Errors are values,
//! never panics; a line that parses means the same with its trailing
//! blanks trimmed or more added; the transcript form of a PASS or APOP
//! line keeps nothing of the secret.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailbag_proto::pop3::command::{self, Command};

fuzz_target!(|line: &[u8]| {
    let parsed = command::parse(line);
    let trimmed = trim(line);
    assert_eq!(command::parse(trimmed), parsed, "trimmed {trimmed:?}");
    let mut padded = line.to_vec();
    padded.extend_from_slice(b" \t\r");
    assert_eq!(command::parse(&padded), parsed);

    let redacted = command::redact(line);
    let keyword = &line[..line.iter().position(|&b| b == b' ').unwrap_or(line.len())];
    match &parsed {
        Ok(Command::Pass(_)) => {
            assert_eq!(redacted, [keyword, b" ***"].concat());
        }
        Ok(Command::Apop { name, .. }) => {
            assert_eq!(redacted, [keyword, b" ", name.as_bytes(), b" ***"].concat());
        }
        Ok(Command::Auth {
            initial: Some(_), ..
        }) => assert!(redacted.ends_with(b" ***")),
        _ => {}
    }
});

fn trim(mut line: &[u8]) -> &[u8] {
    while let [rest @ .., b' ' | b'\t' | b'\r'] = line {
        line = rest;
    }
    line
}
