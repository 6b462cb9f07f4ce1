//! What a package installs beside the binary, generated from the one
//! source of each: mailbag(8) and the shell completions from the clap
//! definition in `cli.rs`, and mailbag.toml(5) from `mailbag.example.toml`
//! (compiled in, so the page cannot drift from the example file).
//!
//! `mailbag generate-assets --out DIR` (a hidden command, run by
//! `contrib/debian/build`) writes `DIR/man/mailbag.8`,
//! `DIR/man/mailbag.toml.5` and `DIR/completions/{mailbag.bash,_mailbag,
//! mailbag.fish}`. No IO other than those files.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use clap_complete::Shell;

/// The annotated example config: the source of mailbag.toml(5).
pub const EXAMPLE_CONFIG: &str = include_str!("../mailbag.example.toml");

/// Writes every generated file under `out`.
pub fn generate(cmd: clap::Command, out: &Path) -> Result<()> {
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    write(&man.join("mailbag.8"), &command_page(cmd.clone())?)?;
    write(
        &man.join("mailbag.toml.5"),
        config_page(EXAMPLE_CONFIG).as_bytes(),
    )?;
    for (shell, name) in [
        (Shell::Bash, "mailbag.bash"),
        (Shell::Zsh, "_mailbag"),
        (Shell::Fish, "mailbag.fish"),
    ] {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "mailbag", &mut text);
        write(&completions.join(name), &text)?;
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// Text for a roff line: backslashes and hyphens escaped, and a leading
/// `.` or `'` (a request to roff) made literal.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// mailbag(8): clap_mangen's sections for the top level, then one
/// subsection per command (nested ones too) with its usage and options.
pub fn command_page(cmd: clap::Command) -> Result<Vec<u8>> {
    let mut cmd = cmd.version(env!("MAILBAG_VERSION"));
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Administration")
        .source(format!("mailbag {}", env!("CARGO_PKG_VERSION")));
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    writeln!(page, ".SH COMMANDS")?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        describe(&mut page, sub, "mailbag")?;
    }
    writeln!(
        page,
        ".SH FILES\n.TP\n/etc/mailbag/mailbag.toml\nThe config file (see \\fBmailbag.toml\\fR(5)).\n\
         .TP\n/var/lib/mailbag/passwd\nUsers and password hashes, managed with \\fBmailbag user\\fR.\n\
         .SH ENVIRONMENT\n.TP\nMAILBAG_CONFIG\nThe config file, instead of \\fB\\-\\-config\\fR.\n\
         .TP\nMAILBAG_LOG\nThe log level and filters, e.g. \\fBinfo\\fR or \\fBdebug\\fR.\n\
         .SH SEE ALSO\n\\fBmailbag.toml\\fR(5)"
    )?;
    man.render_version_section(&mut page)?;
    Ok(page)
}

fn describe(page: &mut Vec<u8>, cmd: &clap::Command, parent: &str) -> Result<()> {
    let name = format!("{parent} {}", cmd.get_name());
    writeln!(page, ".SS \"{}\"", roff(&name))?;
    let about = cmd
        .get_long_about()
        .or(cmd.get_about())
        .map(|a| a.to_string())
        .unwrap_or_default();
    let usage = cmd
        .clone()
        .bin_name(&name)
        .render_usage()
        .to_string()
        .replace("Usage: ", "");
    writeln!(page, ".B {}", roff(&usage))?;
    for paragraph in about.split("\n\n") {
        writeln!(page, ".PP\n{}", roff(&paragraph.replace('\n', " ")))?;
    }
    for arg in cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !a.is_global_set())
    {
        let id = arg.get_id().as_str();
        if id == "help" || id == "version" {
            continue;
        }
        let value = arg
            .get_value_names()
            .map(|v| {
                v.iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|| id.to_uppercase());
        let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
        let flag = match (arg.get_long(), arg.get_short()) {
            (Some(l), _) if takes_value => {
                format!("\\fB\\-\\-{}\\fR \\fI{}\\fR", roff(l), roff(&value))
            }
            (Some(l), _) => format!("\\fB\\-\\-{}\\fR", roff(l)),
            (None, Some(s)) => format!("\\fB\\-{s}\\fR"),
            (None, None) => format!("\\fI{}\\fR", roff(&value)),
        };
        let mut help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default()
            .replace('\n', " ");
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        if !defaults.is_empty() && takes_value {
            help.push_str(&format!(" [default: {}]", defaults.join(", ")));
        }
        writeln!(page, ".TP\n{flag}\n{}", roff(&help))?;
    }
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() != "help" {
            describe(page, sub, &name)?;
        }
    }
    Ok(())
}

/// A line of the example that is config (a table header or `key = value`,
/// set or commented out) rather than prose about it.
fn is_config_line(text: &str) -> bool {
    let text = text.trim_start_matches("# ");
    if text.starts_with('[') {
        return true;
    }
    match text.split_once(" = ") {
        Some((key, _)) => {
            !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        }
        None => false,
    }
}

/// mailbag.toml(5), from the annotated example: the comment before the
/// first table is the description; each `[table]` is a subsection; prose
/// comments become paragraphs and the keys (set or commented out) appear
/// as they do in the file, in literal blocks.
pub fn config_page(example: &str) -> String {
    enum Block {
        None,
        Prose,
        Code,
    }
    let mut page = String::new();
    page.push_str(&format!(
        ".TH MAILBAG.TOML 5 \"\" \"mailbag {}\" \"File Formats\"\n\
         .SH NAME\nmailbag.toml \\- configuration of the mailbag POP3 server\n\
         .SH SYNOPSIS\n/etc/mailbag/mailbag.toml\n.SH DESCRIPTION\n",
        env!("CARGO_PKG_VERSION")
    ));
    let mut block = Block::None;
    let end = |page: &mut String, block: &mut Block| {
        if let Block::Code = block {
            page.push_str(".fi\n.RE\n");
        }
        *block = Block::None;
    };
    let mut in_tables = false;
    for line in example.lines() {
        let line = line.trim_end();
        if line.is_empty() || line == "#" {
            end(&mut page, &mut block);
            continue;
        }
        let commented = line.starts_with('#');
        let text = line.strip_prefix('#').map(str::trim_start).unwrap_or(line);
        if !commented && line.starts_with('[') && line.ends_with(']') {
            end(&mut page, &mut block);
            if !in_tables {
                page.push_str(".SH TABLES AND KEYS\n");
                in_tables = true;
            }
            page.push_str(&format!(".SS \"{}\"\n", roff(line)));
            continue;
        }
        if !commented || is_config_line(line.trim_start_matches('#').trim_start()) {
            if !matches!(block, Block::Code) {
                end(&mut page, &mut block);
                page.push_str(".RS\n.nf\n");
                block = Block::Code;
            }
            page.push_str(&roff(line));
            page.push('\n');
        } else {
            if !matches!(block, Block::Prose) {
                end(&mut page, &mut block);
                page.push_str(".PP\n");
                block = Block::Prose;
            }
            page.push_str(&roff(text));
            page.push('\n');
        }
    }
    end(&mut page, &mut block);
    page.push_str(".SH SEE ALSO\n\\fBmailbag\\fR(8)\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_the_example_is_in_the_config_page() {
        let page = config_page(EXAMPLE_CONFIG);
        for line in EXAMPLE_CONFIG.lines() {
            let text = line.trim_start_matches('#').trim_start();
            if is_config_line(text) {
                assert!(page.contains(&roff(line.trim_end())), "missing: {line}");
            }
        }
        for table in ["[pop3]", "[lmtp]", "[tls]", "[auth]", "[server]"] {
            assert!(page.contains(&format!(".SS \"{table}\"")), "{table}");
        }
    }

    #[test]
    fn roff_requests_in_text_are_made_literal() {
        assert_eq!(roff(".x -y \\z"), "\\&.x \\-y \\ez");
        assert_eq!(roff("'quoted"), "\\&'quoted");
    }

    #[test]
    fn prose_and_config_lines_are_told_apart() {
        assert!(is_config_line("listen = [\"127.0.0.1:24\"]"));
        assert!(is_config_line("# uidl_dovecot = true"));
        assert!(is_config_line("[quota.users.\"alice@example.org\"]"));
        assert!(!is_config_line(
            "Plain POP3 listeners. 110 is the standard port."
        ));
        assert!(!is_config_line(
            "`kill -HUP` the server after renewing them: new"
        ));
    }
}
