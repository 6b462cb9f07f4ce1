//! The one rule for user names, shared by every way a name comes in:
//! `mailbag user add`, the passwd-file reader, the PostgreSQL passdb, the
//! Maildir store (a name becomes a path), LMTP `RCPT` and `mailbag
//! deliver`, so that a name one of them accepts is never refused by
//! another (an account that cannot log in, or mail accepted at `RCPT`
//! and lost after `DATA`).
//!
//! A name is 1 to [`MAX_OCTETS`] octets; it holds no white space, no
//! control characters and none of `:` (the passwd-file's separator), `/`
//! and `\` (path separators); at most one `@`, with text on both sides;
//! no part (before or after the `@`) starts with `.`; no `..` anywhere;
//! it does not start with `#` (a passwd-file comment); and it is a name
//! SASLprep (RFC 4013) leaves as it is. USER and every SASL mechanism
//! SASLprep the name a client gives (`ｂｏｂ` and `bob` are one name to
//! them), so a stored name SASLprep would change (`ﬁle`, full-width or
//! decomposed letters) could never log in, and its logins would go to the
//! user it maps to.
//!
//! Also the one rule for which stored user a name given at login or
//! delivery means ([`Matching`]): letter case (`auth.case_insensitive_names`,
//! on by default, ASCII letters only, as Dovecot's `%Ln`) and the store's
//! default domain (`p1@<default_domain>` is `p1`, and the other way round).
//! A passdb folds case in its own lookups; [`Matching::resolve`] tries the
//! spellings of the domain, and [`Matching::key`] names the user for what
//! is decided before any lookup (failure counting, made-up SCRAM values),
//! so that `P1`, `p1` and `p1@<default_domain>` are one user everywhere:
//! one maildrop, one lock, one failure count, one cached credential.

/// The longest user name, in octets. USER and APOP take names this long
/// (longer than RFC 2449's 40-character arguments); Dovecot allows 255,
/// and half of that keeps maildrop paths short.
pub const MAX_OCTETS: usize = mailbag_proto::pop3::command::MAX_USER_NAME_OCTETS;

/// What the rule allows, for error messages.
pub const RULE: &str = "a user name is 1 to 128 octets of letters, digits and punctuation \
     other than ':', '/' and '\\', with no spaces or control characters; at most one '@', \
     with text on both sides; no part starting with '.', no '..', and no leading '#'; \
     non-ASCII letters in their composed form, without compatibility characters \
     (such as full-width letters or ligatures), as SASLprep leaves them";

/// Why a name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid user name {name:?} ({why}): {RULE}")]
pub struct NameError {
    /// The refused name, as given (`Debug`-quoted when shown).
    pub name: String,
    /// The first thing wrong with it.
    pub why: &'static str,
}

/// Checks `name` against the rule.
pub fn check(name: &str) -> Result<(), NameError> {
    let refuse = |why| {
        Err(NameError {
            name: name.chars().take(MAX_OCTETS + 8).collect(),
            why,
        })
    };
    if name.is_empty() {
        return refuse("empty");
    }
    if name.len() > MAX_OCTETS {
        return refuse("too long");
    }
    if name.starts_with('#') {
        return refuse("leading '#'");
    }
    if name
        .chars()
        .any(|c| c == ':' || c == '/' || c == '\\' || c.is_control() || c.is_whitespace())
    {
        return refuse("':', '/', '\\', white space or a control character");
    }
    if name.contains("..") {
        return refuse("'..'");
    }
    let mut parts = name.split('@');
    let local = parts.next();
    let domain = parts.next();
    if parts.next().is_some() {
        return refuse("more than one '@'");
    }
    for part in [local, domain].into_iter().flatten() {
        if part.is_empty() {
            return refuse("nothing before or after '@'");
        }
        if part.starts_with('.') {
            return refuse("a part starts with '.'");
        }
    }
    if mailbag_proto::sasl::saslprep(name).as_deref() != Some(name) {
        return refuse("SASLprep changes or refuses it, so no login could name it");
    }
    Ok(())
}

/// Whether `name` follows the rule.
pub fn is_valid(name: &str) -> bool {
    check(name).is_ok()
}

/// `name` as a case-insensitive passdb keys it: ASCII letters in lower
/// case when `case_insensitive`, else unchanged. Only ASCII letters fold
/// (as Dovecot's `%L` does): full Unicode case mapping can turn a valid
/// name into one SASLprep changes (`İ` lowers to `i` and a combining dot).
pub fn fold(name: &str, case_insensitive: bool) -> std::borrow::Cow<'_, str> {
    if case_insensitive && name.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(name.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

/// How a name given at login or delivery is matched to a stored user:
/// `auth.case_insensitive_names` and `store.default_domain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matching {
    /// Whether letter case is ignored (ASCII letters; see [`fold`]).
    pub case_insensitive: bool,
    /// The domain that a bare name belongs to.
    pub default_domain: String,
}

impl Matching {
    /// The matching `config` asks for.
    pub fn from_config(config: &crate::config::Config) -> Self {
        Matching {
            case_insensitive: config.auth.case_insensitive_names,
            default_domain: config.store.default_domain.clone(),
        }
    }

    /// The user names an address or login name may mean, most specific
    /// first: the name itself, the same with the domain in lower case,
    /// and, when its domain is the default domain (or it has none), the
    /// other spelling of that user, because `alice` and
    /// `alice@<default_domain>` share one maildrop. Letter case in the
    /// local part is left to the passdb's lookup.
    pub fn candidates(&self, address: &str) -> Vec<String> {
        let mut out = vec![address.to_string()];
        match address.rsplit_once('@') {
            Some((local, domain)) => {
                let lower = format!("{local}@{}", domain.to_ascii_lowercase());
                if lower != address {
                    out.push(lower);
                }
                if domain.eq_ignore_ascii_case(&self.default_domain) && !local.is_empty() {
                    out.push(local.to_string());
                }
            }
            None => out.push(format!("{address}@{}", self.default_domain)),
        }
        out
    }

    /// The one spelling of a user name that does not depend on whether
    /// the user exists: case folded (when configured), the domain in
    /// lower case, and the default domain dropped. Failures are counted
    /// under it, before any lookup, so `P1`, `p1` and `p1@<default_domain>`
    /// share one count; made-up SCRAM values are drawn from it, so the
    /// spellings of an unknown name agree with each other as a known
    /// user's do.
    pub fn key(&self, name: &str) -> String {
        let name = fold(name, self.case_insensitive);
        match name.rsplit_once('@') {
            Some((local, domain))
                if !local.is_empty() && domain.eq_ignore_ascii_case(&self.default_domain) =>
            {
                local.to_string()
            }
            Some((local, domain)) => format!("{local}@{}", domain.to_ascii_lowercase()),
            None => name.into_owned(),
        }
    }

    /// The stored user `name` means, or `None` for an unknown user. Every
    /// candidate is looked up, found or not, without a password check (a
    /// hash lookup for the passwd-file, one query for PostgreSQL): how many
    /// lookups a name costs depends on its form, never on which users
    /// exist. Two stored users that the spellings of one name reach (a
    /// passwd-file written by hand with `alice` and `Alice@<default_domain>`)
    /// are a temporary failure, as two case-variant rows in PostgreSQL
    /// are: which one a login or a delivery means cannot be told, and
    /// choosing would give one user's mail to the other.
    pub async fn resolve<P: crate::auth::PassDb>(
        &self,
        passdb: &P,
        name: &str,
    ) -> Result<Option<String>, crate::auth::AuthError> {
        Ok(self.resolve_user(passdb, name).await?.map(|u| u.name))
    }

    /// As [`resolve`](Self::resolve), with what the user's entry says
    /// about the maildrop and its quota ([`PassDb::find_user`]), from the
    /// same lookups.
    ///
    /// [`PassDb::find_user`]: crate::auth::PassDb::find_user
    pub async fn resolve_user<P: crate::auth::PassDb>(
        &self,
        passdb: &P,
        name: &str,
    ) -> Result<Option<crate::auth::User>, crate::auth::AuthError> {
        let candidates = self.valid_candidates(name);
        let users: Vec<Option<crate::auth::User>> = if passdb.has_user_attributes() {
            let mut users = Vec::with_capacity(candidates.len());
            for candidate in &candidates {
                users.push(passdb.find_user(candidate).await?);
            }
            users
        } else if candidates.is_empty() {
            Vec::new()
        } else {
            passdb
                .users_exist(&candidates)
                .await?
                .into_iter()
                .map(|u| u.map(crate::auth::User::named))
                .collect()
        };
        self.pick(users, |u| &u.name)
    }

    /// The spellings of `name` that are worth a lookup: a name the store
    /// could not hold is no user (refused at RCPT, not after DATA).
    fn valid_candidates(&self, name: &str) -> Vec<String> {
        self.candidates(name)
            .into_iter()
            .filter(|c| is_valid(c))
            .collect()
    }

    /// The one stored user among what each spelling found, or `None`.
    pub fn pick<T>(
        &self,
        found: Vec<Option<T>>,
        name_of: impl Fn(&T) -> &str,
    ) -> Result<Option<T>, crate::auth::AuthError> {
        let mut first: Option<T> = None;
        let mut other = None;
        for user in found.into_iter().flatten() {
            match &first {
                None => first = Some(user),
                Some(f) if name_of(f) != name_of(&user) => other = Some(name_of(&user).to_owned()),
                Some(_) => {}
            }
        }
        if let (Some(a), Some(b)) = (first.as_ref().map(&name_of), other) {
            return Err(crate::auth::AuthError::Temporary(format!(
                "users {a:?} and {b:?} are one user to name matching (letter case \
                 and the default domain {:?}); rename or delete one",
                self.default_domain
            )));
        }
        Ok(first)
    }

    /// Checks `credential` for the user `name` means. An unknown name is
    /// checked under its [`key`](Self::key): the passdb's decoy, at the
    /// same cost. APOP and CRAM-MD5 digests do not cover the name, so any
    /// spelling of it works with the user's secret.
    pub async fn verify<P: crate::auth::PassDb>(
        &self,
        passdb: &P,
        name: &str,
        credential: &crate::auth::Credential,
    ) -> Result<String, crate::auth::AuthError> {
        if passdb.has_user_attributes() {
            let user = self.resolve(passdb, name).await?;
            let user = user.unwrap_or_else(|| self.key(name));
            return passdb.verify(&user, credential).await;
        }
        let pick = |found: Vec<Option<String>>| self.pick(found, String::as_str);
        passdb
            .verify_spellings(
                &self.valid_candidates(name),
                &self.key(name),
                &pick,
                credential,
            )
            .await
    }

    /// The SCRAM keys of the user `name` means (salt and keys are the
    /// stored user's, whatever the spelling; the client's proof covers the
    /// client-first message as it sent it, `n=P1` included, which the
    /// server checks against those same bytes). An unknown name gets the
    /// made-up values of its [`key`](Self::key), so that `Zed` and `zed`
    /// show the same salt, as `P1` and `p1` do for a user who exists.
    pub async fn scram_keys<P: crate::auth::PassDb>(
        &self,
        passdb: &P,
        name: &str,
    ) -> Result<(String, crate::auth::ScramKeys), crate::auth::AuthError> {
        let user = self.resolve(passdb, name).await?;
        let user = user.unwrap_or_else(|| self.key(name));
        passdb.scram_keys(&user).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matching(case_insensitive: bool) -> Matching {
        Matching {
            case_insensitive,
            default_domain: "example.test".into(),
        }
    }

    #[test]
    fn candidates_cover_both_spellings_of_a_default_domain_user() {
        let m = Matching {
            case_insensitive: true,
            default_domain: "localhost".into(),
        };
        let c = |a: &str| m.candidates(a);
        assert_eq!(c("alice"), ["alice", "alice@localhost"]);
        assert_eq!(c("alice@localhost"), ["alice@localhost", "alice"]);
        assert_eq!(
            c("alice@LocalHost"),
            ["alice@LocalHost", "alice@localhost", "alice"]
        );
        assert_eq!(c("bob@example.org"), ["bob@example.org"]);
        assert_eq!(c("@localhost"), ["@localhost"]);
    }

    /// A passdb of fixed names, folded, that counts its lookups.
    struct Names(Vec<&'static str>, std::sync::atomic::AtomicUsize);

    impl crate::auth::PassDb for Names {
        async fn verify(
            &self,
            _: &str,
            _: &crate::auth::Credential,
        ) -> Result<String, crate::auth::AuthError> {
            Err(crate::auth::AuthError::Invalid)
        }
        async fn user_exists(&self, user: &str) -> Result<Option<String>, crate::auth::AuthError> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let user = fold(user, true);
            Ok(self
                .0
                .iter()
                .find(|n| fold(n, true) == user)
                .map(|n| n.to_string()))
        }
        async fn scram_keys(
            &self,
            _: &str,
        ) -> Result<(String, crate::auth::ScramKeys), crate::auth::AuthError> {
            Err(crate::auth::AuthError::Invalid)
        }
        fn cram_md5_possible(&self) -> bool {
            false
        }
        fn apop_possible(&self) -> bool {
            false
        }
    }

    #[tokio::test]
    async fn resolve_finds_the_stored_user_at_the_cost_of_the_names_form() {
        let db = Names(
            vec!["p1", "Ann@Other.org", "bob@example.test"],
            Default::default(),
        );
        let m = matching(true);
        let lookups = || db.1.swap(0, std::sync::atomic::Ordering::SeqCst);
        for (asked, found) in [
            ("P1", Some("p1")),
            ("p1@EXAMPLE.test", Some("p1")),
            ("bob", Some("bob@example.test")),
            ("ann@other.ORG", Some("Ann@Other.org")),
            ("zed", None),
            ("zed@example.test", None),
        ] {
            assert_eq!(
                m.resolve(&db, asked).await.unwrap().as_deref(),
                found,
                "{asked}"
            );
        }
        // Known or not, a bare name costs two lookups, a name with the
        // default domain in another case three.
        lookups();
        m.resolve(&db, "p1").await.unwrap();
        let known = lookups();
        m.resolve(&db, "zed").await.unwrap();
        assert_eq!((known, lookups()), (2, 2));
        m.resolve(&db, "P1@Example.test").await.unwrap();
        let known = lookups();
        m.resolve(&db, "Zed@Example.test").await.unwrap();
        assert_eq!((known, lookups()), (3, 3));
    }

    #[test]
    fn one_key_for_every_spelling_of_a_user() {
        let m = matching(true);
        for name in ["p1", "P1", "p1@example.test", "P1@Example.TEST"] {
            assert_eq!(m.key(name), "p1", "{name}");
        }
        assert_eq!(m.key("Ann@Other.Org"), "ann@other.org");
        assert_eq!(m.key("@example.test"), "@example.test");
        let exact = matching(false);
        assert_eq!(exact.key("P1@EXAMPLE.test"), "P1");
        assert_eq!(exact.key("P1"), "P1");
        assert_eq!(exact.key("Ann@Other.Org"), "Ann@other.org");
        assert_eq!(fold("\u{130}X", true), "\u{130}x");
        assert!(matches!(fold("abc", true), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn refuses_what_could_escape_a_directory_or_break_a_file() {
        let long = "a".repeat(MAX_OCTETS + 1);
        for name in [
            "",
            long.as_str(),
            "a:b",
            "a/b",
            "a\\b",
            "a..b",
            "../etc",
            ".",
            "..",
            ".hidden",
            "a b",
            "a\tb",
            "a\0b",
            "a\x7fb",
            "a\u{85}b",
            "a@b@c",
            "@example.org",
            "user@",
            "user@..",
            "user@.example.org",
            "user@example..org",
            "#comment",
            "\u{fb01}le",
            "\u{ff42}ob",
            "bob\u{ff20}example.org",
            "e\u{301}mile",
            "a\u{200b}b",
            "\u{e000}",
        ] {
            let e = check(name).unwrap_err();
            assert!(e.to_string().contains(RULE), "{e}");
        }
        for name in [
            "a",
            "user@example.org",
            "first.last",
            "u-1_2+tag",
            "Ünïcode",
            "a.b.",
            "o'brien",
            "\u{e9}mile",
            "\u{43c}\u{430}\u{448}\u{430}",
        ] {
            assert_eq!(check(name), Ok(()), "{name:?}");
        }
        assert!(is_valid(&"a".repeat(MAX_OCTETS)));
    }

    #[test]
    fn the_message_says_what_is_wrong_and_what_is_allowed() {
        let e = check("a..b").unwrap_err();
        assert_eq!(e.why, "'..'");
        let text = e.to_string();
        assert!(text.starts_with("invalid user name \"a..b\" ('..'): a user name is 1 to 128"));
        assert!(RULE.contains(&MAX_OCTETS.to_string()));
    }
}
