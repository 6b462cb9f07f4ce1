//! OAuth 2.0 bearer tokens (SASL OAUTHBEARER and XOAUTH2): a token is
//! accepted when it is a JWT signed by a key of the identity provider's
//! JWKS (`[auth.oauth] jwks_file`), issued by `issuer` for `audience`,
//! unexpired and already valid (with `leeway_secs` either way), and names
//! the user in `user_claim`. The driver then maps that name through the
//! name rule ([`super::name::Matching`]) to a user of the passdb.
//!
//! Owns: parsing a JWKS (RSA and P-256 keys), checking a JWT's signature
//! (RS256 and ES256 only, with `ring`), its issuer, audience, expiry and
//! not-before, and reading the user claim.
//!
//! Must not: log or return the token (it is a credential anyone can use
//! until it expires), accept `alg: none`, an HMAC algorithm (whose
//! "secret" would be the public key) or an algorithm the key was not
//! published for, panic on any input, or read a JWKS file without a
//! bound.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::prelude::{Engine as _, BASE64_URL_SAFE_NO_PAD};
use mailbag_proto::secret::Secret;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Largest JWKS file read.
const MAX_JWKS_OCTETS: u64 = 256 * 1024;
/// Most keys taken from a JWKS.
const MAX_KEYS: usize = 64;
/// Longest token checked (the SASL line is bounded too).
const MAX_TOKEN_OCTETS: usize = mailbag_proto::sasl::oauth::MAX_TOKEN_OCTETS;
/// Largest accepted `leeway_secs`.
pub const MAX_LEEWAY_SECS: u64 = 300;

/// `[auth.oauth]`: how bearer tokens are checked. With this table,
/// OAUTHBEARER and XOAUTH2 are offered over TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    /// The identity provider's JSON Web Key Set, as a file (relative to
    /// the config file's directory): tokens are checked here as JWTs.
    /// Read at each check, so a rotated key set is used at once.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Or the provider's JWKS URL (`https://` only; the `jwks_uri` of its
    /// OpenID configuration): fetched when first needed and again every
    /// `jwks_refresh_secs`; if a refresh fails, the keys fetched before
    /// stay in use for up to a day.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// How long fetched keys are used before they are fetched again, in
    /// seconds (10 to 86400).
    #[serde(default = "default_jwks_refresh_secs")]
    pub jwks_refresh_secs: u64,
    /// Or: the provider's RFC 7662 introspection endpoint (`https://`
    /// only), asked about each token with `client_id` and
    /// `client_secret` (HTTP Basic).
    #[serde(default)]
    pub introspection_url: Option<String>,
    /// The client credentials for introspection.
    #[serde(default)]
    pub client_id: Option<String>,
    /// See `client_id`. The config file is then a secret too.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// CA certificates (PEM) the introspection endpoint's certificate
    /// must chain to; the system bundle when unset.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The deadline of one introspection request (connect, TLS, request
    /// and answer together), in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The `iss` a token must carry, exactly (JWTs; introspection answers
    /// that carry `iss`).
    #[serde(default)]
    pub issuer: String,
    /// The `aud` a token must carry (or list) (JWTs; introspection answers
    /// that carry `aud`).
    #[serde(default)]
    pub audience: String,
    /// The claim that names the user ("email" by default; "sub",
    /// "preferred_username", "upn", or introspection's "username").
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// Clock difference allowed on `exp` and `nbf`, in seconds (at most
    /// 300).
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
}

fn default_user_claim() -> String {
    "email".into()
}

fn default_leeway_secs() -> u64 {
    60
}

fn default_timeout_ms() -> u64 {
    5000
}

fn default_jwks_refresh_secs() -> u64 {
    300
}

/// How long fetched keys stay in use while refreshing them fails.
const MAX_STALE: std::time::Duration = std::time::Duration::from_secs(86_400);
/// JWKS URLs whose keys are kept (one per configuration in practice).
const MAX_CACHED_URLS: usize = 4;

/// Longest introspection deadline accepted.
pub const MAX_TIMEOUT_MS: u64 = 30_000;

impl OAuthConfig {
    /// What is wrong with this table, for `Config::validate`: the key and
    /// the message.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        let sources = [
            self.jwks_file.is_some(),
            self.jwks_url.is_some(),
            self.introspection_url.is_some(),
        ];
        if sources.iter().filter(|&&s| s).count() != 1 {
            return Some((
                "auth.oauth",
                "give exactly one of jwks_file, jwks_url and introspection_url".into(),
            ));
        }
        if self
            .jwks_file
            .as_ref()
            .is_some_and(|f| f.as_os_str().is_empty())
        {
            return Some(("auth.oauth.jwks_file", "must name a file".into()));
        }
        if let Some(url) = &self.jwks_url {
            if super::oauth_http::HttpsUrl::parse(url).is_none() {
                return Some((
                    "auth.oauth.jwks_url",
                    "must be an https:// URL without user info".into(),
                ));
            }
        }
        if !(10..=86_400).contains(&self.jwks_refresh_secs) {
            return Some(("auth.oauth.jwks_refresh_secs", "must be 10 to 86400".into()));
        }
        match &self.introspection_url {
            None => {
                if self.issuer.is_empty() || self.audience.is_empty() {
                    return Some((
                        "auth.oauth",
                        "issuer and audience are needed to check JWTs".into(),
                    ));
                }
            }
            Some(url) => {
                if super::oauth_http::HttpsUrl::parse(url).is_none() {
                    return Some((
                        "auth.oauth.introspection_url",
                        "must be an https:// URL without user info".into(),
                    ));
                }
                if self.client_id.as_deref().is_none_or(str::is_empty)
                    || self.client_secret.as_deref().is_none_or(str::is_empty)
                {
                    return Some((
                        "auth.oauth",
                        "introspection needs client_id and client_secret".into(),
                    ));
                }
            }
        }
        if self.user_claim.is_empty() {
            return Some(("auth.oauth.user_claim", "must not be empty".into()));
        }
        if self.leeway_secs > MAX_LEEWAY_SECS {
            return Some(("auth.oauth.leeway_secs", "must be at most 300".into()));
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            return Some(("auth.oauth.timeout_ms", "must be 1 to 30000".into()));
        }
        None
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// The token is not good; the reason is for the log (it never holds
    /// the token).
    Invalid(&'static str),
    /// The keys could not be read: a temporary error for the client.
    Unavailable(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyMaterial {
    /// Modulus and exponent, big-endian.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// The uncompressed point `04 || x || y`.
    P256(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    kid: Option<String>,
    /// The JWK's `alg`, when it names one.
    alg: Option<String>,
    material: KeyMaterial,
}

/// The signing keys of a JWKS that this server can use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Jwks {
    keys: Vec<Key>,
}

fn b64url(text: &str) -> Option<Vec<u8>> {
    BASE64_URL_SAFE_NO_PAD.decode(text).ok()
}

fn str_field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    object.get(name).and_then(Value::as_str)
}

impl Jwks {
    /// Parses a JWKS document (RFC 7517 §5). Keys of other types, for
    /// encryption, or malformed ones are skipped; a document with no
    /// usable key is an error.
    pub fn parse(bytes: &[u8]) -> Result<Jwks, String> {
        let document: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        let list = document
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("no \"keys\" array")?;
        let keys: Vec<Key> = list
            .iter()
            .filter_map(Value::as_object)
            .filter(|jwk| str_field(jwk, "use").is_none_or(|u| u == "sig"))
            .filter_map(|jwk| {
                let material = match str_field(jwk, "kty")? {
                    "RSA" => KeyMaterial::Rsa {
                        n: b64url(str_field(jwk, "n")?)?,
                        e: b64url(str_field(jwk, "e")?)?,
                    },
                    "EC" if str_field(jwk, "crv") == Some("P-256") => {
                        let (x, y) = (b64url(str_field(jwk, "x")?)?, b64url(str_field(jwk, "y")?)?);
                        if x.len() != 32 || y.len() != 32 {
                            return None;
                        }
                        KeyMaterial::P256([&[4u8][..], &x, &y].concat())
                    }
                    _ => return None,
                };
                Some(Key {
                    kid: str_field(jwk, "kid").map(str::to_owned),
                    alg: str_field(jwk, "alg").map(str::to_owned),
                    material,
                })
            })
            .take(MAX_KEYS)
            .collect();
        if keys.is_empty() {
            return Err("no RSA or P-256 signing key".into());
        }
        Ok(Jwks { keys })
    }

    /// Reads and parses a JWKS file, at most [`MAX_JWKS_OCTETS`] of it.
    pub fn load(path: &Path) -> Result<Jwks, String> {
        use std::io::Read as _;
        let file = std::fs::File::open(path)
            .map_err(|e| format!("cannot read the JWKS {}: {e}", path.display()))?;
        let mut bytes = Vec::new();
        file.take(MAX_JWKS_OCTETS + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read the JWKS {}: {e}", path.display()))?;
        if bytes.len() as u64 > MAX_JWKS_OCTETS {
            return Err(format!(
                "the JWKS {} is larger than {MAX_JWKS_OCTETS} octets",
                path.display()
            ));
        }
        Jwks::parse(&bytes).map_err(|e| format!("the JWKS {}: {e}", path.display()))
    }
}

fn json_object(part: &str) -> Option<Map<String, Value>> {
    match serde_json::from_slice(&b64url(part)?).ok()? {
        Value::Object(object) => Some(object),
        _ => None,
    }
}

/// A NumericDate (RFC 7519 §2): seconds, possibly fractional.
fn numeric_date(value: &Value) -> Option<i64> {
    value
        .as_i64()
        .or_else(|| value.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
}

/// Checks `token` against `jwks` and `config` at `now` (seconds since the
/// epoch); the user claim on success.
pub fn verify_jwt(
    config: &OAuthConfig,
    jwks: &Jwks,
    token: &str,
    now: i64,
) -> Result<String, TokenError> {
    let invalid = TokenError::Invalid;
    if token.len() > MAX_TOKEN_OCTETS {
        return Err(invalid("token too long"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("not a JWS compact token"));
    };
    let signing_input = &token.as_bytes()[..header.len() + 1 + payload.len()];
    let header = json_object(header).ok_or(invalid("malformed header"))?;
    let claims = json_object(payload).ok_or(invalid("malformed claims"))?;
    let signature = b64url(signature).ok_or(invalid("malformed signature"))?;
    if header.contains_key("crit") {
        return Err(invalid("critical header extensions are not supported"));
    }
    let alg = str_field(&header, "alg").ok_or(invalid("no alg"))?;
    if alg != "RS256" && alg != "ES256" {
        // none, HS256 (whose key would be the public key), PS*, ...
        return Err(invalid("algorithm not accepted"));
    }
    let kid = str_field(&header, "kid");
    let verified = jwks
        .keys
        .iter()
        .filter(|key| kid.is_none_or(|kid| key.kid.as_deref() == Some(kid)))
        .filter(|key| key.alg.as_deref().is_none_or(|a| a == alg))
        .any(|key| match (&key.material, alg) {
            (KeyMaterial::Rsa { n, e }, "RS256") => RsaPublicKeyComponents { n, e }
                .verify(
                    &signature::RSA_PKCS1_2048_8192_SHA256,
                    signing_input,
                    &signature,
                )
                .is_ok(),
            (KeyMaterial::P256(point), "ES256") => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(signing_input, &signature)
                    .is_ok()
            }
            _ => false,
        });
    if !verified {
        return Err(invalid("bad signature or unknown key"));
    }
    if str_field(&claims, "iss") != Some(config.issuer.as_str()) {
        return Err(invalid("wrong issuer"));
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => *aud == config.audience,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(&config.audience)),
        _ => false,
    };
    if !audience_ok {
        return Err(invalid("wrong audience"));
    }
    let leeway = i64::try_from(config.leeway_secs.min(MAX_LEEWAY_SECS)).unwrap_or(0);
    let exp = claims
        .get("exp")
        .and_then(numeric_date)
        .ok_or(invalid("no expiry"))?;
    if now >= exp.saturating_add(leeway) {
        return Err(invalid("expired"));
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = numeric_date(nbf).ok_or(invalid("malformed nbf"))?;
        if nbf > now.saturating_add(leeway) {
            return Err(invalid("not valid yet"));
        }
    }
    match str_field(&claims, &config.user_claim) {
        Some(user) if !user.is_empty() => Ok(user.to_owned()),
        _ => Err(invalid("no user claim")),
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Checks `token` now: as a JWT against the JWKS file (read off the async
/// workers), or by introspection. The user the token names on success.
pub async fn check_token(config: OAuthConfig, token: Secret<String>) -> Result<String, TokenError> {
    if token.expose().len() > MAX_TOKEN_OCTETS {
        return Err(TokenError::Invalid("token too long"));
    }
    if let Some(file) = config.jwks_file.clone() {
        return tokio::task::spawn_blocking(move || {
            let jwks = Jwks::load(&file).map_err(TokenError::Unavailable)?;
            verify_jwt(&config, &jwks, token.expose(), unix_now())
        })
        .await
        .map_err(|e| TokenError::Unavailable(format!("token check failed: {e}")))?;
    }
    if config.jwks_url.is_some() {
        let jwks = fetched_jwks(&config).await?;
        return verify_jwt(&config, &jwks, token.expose(), unix_now());
    }
    introspect(&config, &token).await
}

/// Keys fetched from a JWKS URL, and when.
struct Fetched {
    at: tokio::time::Instant,
    jwks: std::sync::Arc<Jwks>,
}

/// The keys at `config.jwks_url`: cached for `jwks_refresh_secs`, fetched
/// again after that by one check at a time; a failed fetch keeps the
/// previous keys for up to [`MAX_STALE`]. One deadline covers the wait
/// for another check's fetch and this one's: while a key server that
/// does not answer holds one check in its fetch, the others use the keys
/// they have or give up at their own deadline, instead of waiting to
/// fetch in turn.
async fn fetched_jwks(config: &OAuthConfig) -> Result<std::sync::Arc<Jwks>, TokenError> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, Fetched>>> = OnceLock::new();
    static FETCHING: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    let url_text = config.jwks_url.clone().unwrap_or_default();
    let now = tokio::time::Instant::now();
    let deadline = now + std::time::Duration::from_millis(config.timeout_ms);
    let refresh = std::time::Duration::from_secs(config.jwks_refresh_secs);
    let cache = CACHE.get_or_init(Default::default);
    // The cached keys if younger than `max_age`.
    let cached = |max_age: std::time::Duration| {
        let cache = cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(&url_text)
            .filter(|f| tokio::time::Instant::now().saturating_duration_since(f.at) < max_age)
            .map(|f| Arc::clone(&f.jwks))
    };
    if let Some(jwks) = cached(refresh) {
        return Ok(jwks);
    }
    let fetching = FETCHING.get_or_init(Default::default);
    let Ok(_fetching) = tokio::time::timeout_at(deadline, fetching.lock()).await else {
        return cached(MAX_STALE).ok_or_else(|| {
            TokenError::Unavailable(format!(
                "cannot fetch the JWKS {url_text}: another fetch did not end in time"
            ))
        });
    };
    // Fetched by the check this one waited for.
    if let Some(jwks) = cached(refresh) {
        return Ok(jwks);
    }
    let fetch = async {
        let url = super::oauth_http::HttpsUrl::parse(&url_text)
            .ok_or("auth.oauth.jwks_url is not usable")?;
        let tls = super::oauth_http::connector(config.ca_file.as_deref())?;
        let (status, body) = super::oauth_http::get(&tls, &url, deadline).await?;
        if status != 200 {
            return Err(format!("HTTP {status}"));
        }
        Jwks::parse(&body)
    };
    match fetch.await {
        Ok(jwks) => {
            let jwks = Arc::new(jwks);
            let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= MAX_CACHED_URLS && !cache.contains_key(&url_text) {
                cache.clear();
            }
            cache.insert(
                url_text,
                Fetched {
                    at: tokio::time::Instant::now(),
                    jwks: Arc::clone(&jwks),
                },
            );
            Ok(jwks)
        }
        Err(error) => {
            let message = format!("cannot fetch the JWKS {url_text}: {error}");
            match cached(MAX_STALE) {
                Some(old) => {
                    tracing::warn!(%message, "using the keys fetched before");
                    Ok(old)
                }
                None => Err(TokenError::Unavailable(message)),
            }
        }
    }
}

/// RFC 7662: asks the introspection endpoint about `token`.
async fn introspect(config: &OAuthConfig, token: &Secret<String>) -> Result<String, TokenError> {
    use super::oauth_http::{connector, form_escape, post_form, HttpsUrl};
    use base64::prelude::BASE64_STANDARD;
    let unavailable = TokenError::Unavailable;
    let url = config
        .introspection_url
        .as_deref()
        .and_then(HttpsUrl::parse)
        .ok_or_else(|| unavailable("auth.oauth.introspection_url is not usable".into()))?;
    let tls = connector(config.ca_file.as_deref())
        .map_err(|e| unavailable(format!("introspection TLS: {e}")))?;
    // RFC 6749 §2.3.1: the client id and secret are form-encoded first.
    let credentials = BASE64_STANDARD.encode(format!(
        "{}:{}",
        form_escape(config.client_id.as_deref().unwrap_or("")),
        form_escape(config.client_secret.as_deref().unwrap_or(""))
    ));
    let body = format!(
        "token={}&token_type_hint=access_token",
        form_escape(token.expose())
    );
    let deadline =
        tokio::time::Instant::now() + std::time::Duration::from_millis(config.timeout_ms);
    let (status, body) = post_form(&tls, &url, &credentials, &body, deadline)
        .await
        .map_err(|e| unavailable(format!("introspection: {e}")))?;
    if status != 200 {
        return Err(unavailable(format!("introspection answered HTTP {status}")));
    }
    let Ok(Value::Object(answer)) = serde_json::from_slice::<Value>(&body) else {
        return Err(unavailable(
            "introspection answer is not a JSON object".into(),
        ));
    };
    introspection_user(config, &answer, unix_now())
}

/// The user an RFC 7662 answer names, if the token is active, unexpired
/// and (where the answer says) for this issuer and audience.
fn introspection_user(
    config: &OAuthConfig,
    answer: &Map<String, Value>,
    now: i64,
) -> Result<String, TokenError> {
    let invalid = TokenError::Invalid;
    if answer.get("active") != Some(&Value::Bool(true)) {
        return Err(invalid("inactive token"));
    }
    let leeway = i64::try_from(config.leeway_secs.min(MAX_LEEWAY_SECS)).unwrap_or(0);
    if let Some(exp) = answer.get("exp") {
        let exp = numeric_date(exp).ok_or(invalid("malformed exp"))?;
        if now >= exp.saturating_add(leeway) {
            return Err(invalid("expired"));
        }
    }
    if let (false, Some(iss)) = (config.issuer.is_empty(), answer.get("iss")) {
        if iss.as_str() != Some(config.issuer.as_str()) {
            return Err(invalid("wrong issuer"));
        }
    }
    if let (false, Some(aud)) = (config.audience.is_empty(), answer.get("aud")) {
        let ok = match aud {
            Value::String(aud) => *aud == config.audience,
            Value::Array(list) => list.iter().any(|a| a.as_str() == Some(&config.audience)),
            _ => false,
        };
        if !ok {
            return Err(invalid("wrong audience"));
        }
    }
    match str_field(answer, &config.user_claim) {
        Some(user) if !user.is_empty() => Ok(user.to_owned()),
        _ => Err(invalid("no user claim")),
    }
}

#[cfg(test)]
#[path = "oauth_testing.rs"]
mod testing;

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::testing::*;
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn config() -> OAuthConfig {
        OAuthConfig {
            jwks_file: Some(PathBuf::from("/nonexistent")),
            jwks_url: None,
            jwks_refresh_secs: 300,
            introspection_url: None,
            client_id: None,
            client_secret: None,
            ca_file: None,
            timeout_ms: 5000,
            issuer: "https://idp.example".into(),
            audience: "mailbag".into(),
            user_claim: "email".into(),
            leeway_secs: 60,
        }
    }

    fn claims() -> Value {
        json!({
            "iss": "https://idp.example", "aud": "mailbag", "email": "alice@example.org",
            "exp": NOW + 600, "nbf": NOW - 10, "iat": NOW - 10,
        })
    }

    fn with(changes: Value) -> Value {
        let mut claims = claims();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        claims
    }

    fn check(jwks: &Jwks, token: &str) -> Result<String, TokenError> {
        verify_jwt(&config(), jwks, token, NOW)
    }

    #[test]
    fn good_es256_and_rs256_tokens_name_their_user() {
        let ec = SigningKey::es256("ec1");
        let jwks = Jwks::parse(jwks_document(&[&ec]).as_bytes()).unwrap();
        assert_eq!(
            check(&jwks, &ec.token(&claims())).unwrap(),
            "alice@example.org"
        );
        // aud as a list; exp a little in the past but within the leeway.
        let token = ec.token(&with(json!({"aud": ["other", "mailbag"], "exp": NOW - 30})));
        assert_eq!(check(&jwks, &token).unwrap(), "alice@example.org");
        let Some(rsa) = SigningKey::rs256("rsa1") else {
            eprintln!("SKIPPED: no openssl to make an RSA key");
            return;
        };
        let jwks = Jwks::parse(jwks_document(&[&ec, &rsa]).as_bytes()).unwrap();
        assert_eq!(
            check(&jwks, &rsa.token(&claims())).unwrap(),
            "alice@example.org"
        );
        // No kid in the header: every key of the right kind is tried.
        let token = rsa.token_with_header(&json!({"alg": "RS256"}), &claims());
        assert_eq!(check(&jwks, &token).unwrap(), "alice@example.org");
    }

    #[test]
    fn bad_tokens_are_refused_with_their_reason() {
        let ec = SigningKey::es256("ec1");
        let other = SigningKey::es256("ec1");
        let jwks = Jwks::parse(jwks_document(&[&ec]).as_bytes()).unwrap();
        let refused = |token: &str, reason: &'static str| {
            assert_eq!(
                check(&jwks, token),
                Err(TokenError::Invalid(reason)),
                "{token}"
            );
        };
        refused(&ec.token(&with(json!({"exp": NOW - 61}))), "expired");
        refused(&ec.token(&with(json!({"exp": null}))), "no expiry");
        refused(&ec.token(&with(json!({"nbf": NOW + 61}))), "not valid yet");
        refused(
            &ec.token(&with(json!({"iss": "https://evil.example"}))),
            "wrong issuer",
        );
        refused(&ec.token(&with(json!({"aud": "other"}))), "wrong audience");
        refused(&ec.token(&with(json!({"aud": null}))), "wrong audience");
        refused(&ec.token(&with(json!({"email": null}))), "no user claim");
        refused(&ec.token(&with(json!({"email": 7}))), "no user claim");
        // Signed by another key with the same kid.
        refused(&other.token(&claims()), "bad signature or unknown key");
        // A kid the JWKS does not have.
        let token = ec.token_with_header(&json!({"alg": "ES256", "kid": "nope"}), &claims());
        refused(&token, "bad signature or unknown key");
        // The claims changed after signing.
        let good = ec.token(&claims());
        let forged_claims = ec.token(&with(json!({"email": "mallory@example.org"})));
        let mut parts: Vec<&str> = good.split('.').collect();
        parts[1] = forged_claims.split('.').nth(1).unwrap();
        refused(&parts.join("."), "bad signature or unknown key");
        // alg none, with or without a signature.
        refused(
            &forged(&json!({"alg": "none"}), &claims(), b""),
            "algorithm not accepted",
        );
        refused(
            &forged(&json!({"alg": "None"}), &claims(), b"x"),
            "algorithm not accepted",
        );
        // HS256 keyed with the public key (the algorithm confusion).
        let token = hs256(
            &json!({"alg": "HS256", "kid": "ec1"}),
            &claims(),
            &ec.public_bytes(),
        );
        refused(&token, "algorithm not accepted");
        // An ES256 key published for RS256 only is not used for ES256.
        let mut jwk = ec.jwk.clone();
        jwk["alg"] = json!("RS256");
        let pinned = Jwks::parse(json!({"keys": [jwk]}).to_string().as_bytes()).unwrap();
        assert_eq!(
            check(&pinned, &ec.token(&claims())),
            Err(TokenError::Invalid("bad signature or unknown key"))
        );
        refused(
            &ec.token_with_header(&json!({"alg": "ES256", "crit": ["exp"]}), &claims()),
            "critical header extensions are not supported",
        );
        for junk in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "!!.!!.!!",
            "e30.e30.",
            &"a".repeat(9000),
        ] {
            assert!(
                matches!(check(&jwks, junk), Err(TokenError::Invalid(_))),
                "{junk}"
            );
        }
    }

    #[test]
    fn rs256_refuses_what_an_rsa_key_must_not_accept() {
        let Some(rsa) = SigningKey::rs256("rsa1") else {
            eprintln!("SKIPPED: no openssl to make an RSA key");
            return;
        };
        let jwks = Jwks::parse(jwks_document(&[&rsa]).as_bytes()).unwrap();
        // HS256 keyed with the RSA public key, as the classic confusion.
        let token = hs256(
            &json!({"alg": "HS256", "kid": "rsa1"}),
            &claims(),
            &rsa.public_bytes(),
        );
        assert_eq!(
            check(&jwks, &token),
            Err(TokenError::Invalid("algorithm not accepted"))
        );
        // An RSA signature presented as ES256.
        let token = rsa.token(&claims());
        let parts: Vec<&str> = token.split('.').collect();
        let relabeled = forged(
            &json!({"alg": "ES256", "kid": "rsa1"}),
            &claims(),
            &b64url(parts[2]).unwrap(),
        );
        assert!(check(&jwks, &relabeled).is_err());
    }

    #[test]
    fn a_table_names_exactly_one_source_of_truth() {
        assert_eq!(config().problem(), None);
        let both = OAuthConfig {
            introspection_url: Some("https://idp.example/introspect".into()),
            ..config()
        };
        assert_eq!(both.problem().unwrap().0, "auth.oauth");
        let none = OAuthConfig {
            jwks_file: None,
            ..config()
        };
        assert_eq!(none.problem().unwrap().0, "auth.oauth");
        let plain_http = OAuthConfig {
            jwks_file: None,
            jwks_url: Some("http://idp.example/jwks".into()),
            ..config()
        };
        assert_eq!(plain_http.problem().unwrap().0, "auth.oauth.jwks_url");
        let no_client = OAuthConfig {
            jwks_file: None,
            introspection_url: Some("https://idp.example/introspect".into()),
            ..config()
        };
        assert_eq!(no_client.problem().unwrap().0, "auth.oauth");
        let no_audience = OAuthConfig {
            audience: String::new(),
            ..config()
        };
        assert_eq!(no_audience.problem().unwrap().0, "auth.oauth");
        let slow = OAuthConfig {
            timeout_ms: 60_000,
            ..config()
        };
        assert_eq!(slow.problem().unwrap().0, "auth.oauth.timeout_ms");
    }

    #[test]
    fn introspection_answers_name_an_active_users_only() {
        let config = OAuthConfig {
            user_claim: "username".into(),
            ..config()
        };
        let answer = |v: Value| v.as_object().unwrap().clone();
        let user = |v: Value| introspection_user(&config, &answer(v), NOW);
        assert_eq!(
            user(json!({"active": true, "username": "alice", "exp": NOW + 60})),
            Ok("alice".into())
        );
        assert_eq!(
            user(
                json!({"active": true, "username": "alice", "iss": "https://idp.example", "aud": ["mailbag"]})
            ),
            Ok("alice".into())
        );
        let refused = |v: Value, reason: &'static str| {
            assert_eq!(user(v), Err(TokenError::Invalid(reason)));
        };
        refused(
            json!({"active": false, "username": "alice"}),
            "inactive token",
        );
        refused(
            json!({"active": "true", "username": "alice"}),
            "inactive token",
        );
        refused(json!({"username": "alice"}), "inactive token");
        refused(
            json!({"active": true, "username": "alice", "exp": NOW - 61}),
            "expired",
        );
        refused(
            json!({"active": true, "username": "alice", "iss": "x"}),
            "wrong issuer",
        );
        refused(
            json!({"active": true, "username": "alice", "aud": "x"}),
            "wrong audience",
        );
        refused(json!({"active": true}), "no user claim");
    }

    #[test]
    fn jwks_documents_are_parsed_strictly_and_read_with_a_bound() {
        for bad in [
            &b""[..],
            b"{}",
            b"[]",
            br#"{"keys": []}"#,
            br#"{"keys": [{"kty": "oct", "k": "AAAA"}]}"#,
            br#"{"keys": [{"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}]}"#,
            br#"{"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}"#,
            br#"{"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]}"#,
            br#"{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB", "use": "enc"}]}"#,
        ] {
            assert!(
                Jwks::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, vec![b' '; MAX_JWKS_OCTETS as usize + 1]).unwrap();
        assert!(Jwks::load(&path).unwrap_err().contains("larger than"));
        assert!(Jwks::load(&dir.path().join("missing")).is_err());
        let ec = SigningKey::es256("ec1");
        std::fs::write(&path, jwks_document(&[&ec])).unwrap();
        assert_eq!(Jwks::load(&path).unwrap().keys.len(), 1);
    }
}
