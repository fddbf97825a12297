//! The user directory: the built-in demo users, the users-file format, argon2id hashing, and the
//! password check that costs the same whether or not the user exists.
//!
//! Users file format (one user a line, UTF-8):
//!
//! ```text
//! # comment lines and blank lines are ignored
//! email:first_name:last_name:argon2id_phc_hash
//! ```
//!
//! Fields are separated by `:` (so no field may contain one; PHC strings never do), surrounding
//! whitespace is trimmed, and the hash is an argon2id PHC string as printed by `app hash-password`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use thiserror::Error;

use crate::hashing::{blocks_needed, HashPool};

/// Demo users of the original tutorial; both have the password `password`.
const DEMO_USERS: &str = "\
behai_nguyen@hotmail.com:Be Hai:Doe:$argon2id$v=19$m=19456,t=2,p=1$vCx7kaj57BS9+nGW4MZDHQ$DMtkq61ZYW/hVZueAbDUkL7LjuJEFl33xAyShGCSNC0
pranav.furedi.10198@gmail.com:Pranav:Furedi:$argon2id$v=19$m=19456,t=2,p=1$hptSxlIFyLORWKGyGkqmAA$AvLuwjBKM+5u6smmuWDIUQtrtxjHH23M5lZBEETxY54
";

/// Bytes of OS randomness in a fresh salt (the PHC recommendation is at least 16).
const SALT_BYTES: usize = 16;

/// One account. The password hash never leaves this module (the original leaked it from `/admin/me`).
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// Login name (an email address in the demo data).
    pub username: String,
    /// Given name, shown on the home page.
    pub first_name: String,
    /// Family name.
    pub last_name: String,
    password_hash: Arc<str>,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("username", &self.username)
            .field("first_name", &self.first_name)
            .field("last_name", &self.last_name)
            .finish_non_exhaustive()
    }
}

/// A validated, non-empty set of users with unique usernames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Users(Vec<User>);

/// Why a users file was rejected; every variant names the line (1-based) and field at fault.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum UsersFileError {
    /// The line does not split into the four fields.
    #[error("line {line}: expected 4 fields `email:first_name:last_name:argon2id_hash` separated by ':', found {found}")]
    FieldCount { line: usize, found: usize },
    /// A required field is empty.
    #[error("line {line}: field `{field}` is empty")]
    EmptyField { line: usize, field: &'static str },
    /// The username contains whitespace, which a login form could never send back intact.
    #[error("line {line}: field `email` contains whitespace")]
    UsernameWhitespace { line: usize },
    /// The hash field is not a usable argon2id PHC string.
    #[error("line {line}: field `argon2id_hash` is not an argon2id PHC string ({reason}); make one with `app hash-password`")]
    BadHash { line: usize, reason: String },
    /// The same username appears twice.
    #[error("line {line}: field `email` repeats `{username}` from line {first}")]
    Duplicate {
        line: usize,
        username: String,
        first: usize,
    },
    /// Only blank lines and comments.
    #[error("no users defined (every line is blank or a comment)")]
    Empty,
}

impl Users {
    /// The built-in demo users.
    pub fn demo() -> Self {
        Self::parse(DEMO_USERS).expect("the built-in demo users are valid")
    }

    /// Parses the users-file format described in this module's documentation.
    pub fn parse(text: &str) -> Result<Self, UsersFileError> {
        let mut users = Vec::new();
        let mut first_seen: HashMap<String, usize> = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = trimmed.split(':').map(str::trim).collect();
            let [username, first_name, last_name, hash] = fields[..] else {
                return Err(UsersFileError::FieldCount {
                    line,
                    found: fields.len(),
                });
            };
            for (field, value) in [
                ("email", username),
                ("first_name", first_name),
                ("last_name", last_name),
                ("argon2id_hash", hash),
            ] {
                if value.is_empty() {
                    return Err(UsersFileError::EmptyField { line, field });
                }
            }
            if username.chars().any(char::is_whitespace) {
                return Err(UsersFileError::UsernameWhitespace { line });
            }
            check_hash(hash).map_err(|reason| UsersFileError::BadHash { line, reason })?;
            if let Some(&first) = first_seen.get(username) {
                return Err(UsersFileError::Duplicate {
                    line,
                    username: username.to_owned(),
                    first,
                });
            }
            first_seen.insert(username.to_owned(), line);
            users.push(User {
                username: username.to_owned(),
                first_name: first_name.to_owned(),
                last_name: last_name.to_owned(),
                password_hash: hash.into(),
            });
        }
        if users.is_empty() {
            return Err(UsersFileError::Empty);
        }
        Ok(Self(users))
    }

    /// The users, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &User> {
        self.0.iter()
    }
}

/// Accepts only argon2id PHC strings whose parameters argon2 can actually run.
fn check_hash(phc: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(phc).map_err(|e| e.to_string())?;
    if parsed.algorithm != Algorithm::Argon2id.ident() {
        return Err(format!("algorithm is `{}`", parsed.algorithm));
    }
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err("salt or hash missing".to_owned());
    }
    Params::try_from(&parsed).map_err(|e| e.to_string())?;
    Ok(())
}

/// Why hashing a password failed.
#[derive(Debug, Error)]
pub enum HashError {
    /// The OS random number generator failed.
    #[error("reading the OS random number generator: {0}")]
    Rng(getrandom::Error),
    /// argon2 rejected the input or parameters.
    #[error("argon2: {0}")]
    Argon2(argon2::password_hash::Error),
    /// The password-check threads could not be started.
    #[error("starting the password-check threads: {0}")]
    Workers(std::io::Error),
}

/// Hashes `password` as an argon2id PHC string with argon2's default (OWASP) parameters.
pub fn hash_password(password: &str) -> Result<String, HashError> {
    hash_with(&Argon2::default(), password)
}

fn hash_with(argon2: &Argon2<'_>, password: &str) -> Result<String, HashError> {
    let mut salt = [0u8; SALT_BYTES];
    getrandom::fill(&mut salt).map_err(HashError::Rng)?;
    let salt = SaltString::encode_b64(&salt).map_err(HashError::Argon2)?;
    let hash = argon2
        .hash_password(password.as_bytes(), &salt)
        .map_err(HashError::Argon2)?;
    Ok(hash.to_string())
}

/// Checks passwords against the users on the bounded [`HashPool`] (see `hashing` for why).
#[derive(Debug)]
pub struct Authenticator {
    by_name: HashMap<String, User>,
    /// Hash of a random password with the parameters of the first user, verified when the
    /// username is unknown so that case costs the same as a wrong password.
    dummy_hash: Arc<str>,
    pool: HashPool,
}

impl Authenticator {
    /// Builds the directory and starts `workers` hashing threads; computes the dummy hash, so call
    /// it off the async threads.
    pub fn new(users: &Users, workers: usize) -> Result<Self, HashError> {
        let first = users.iter().next().expect("Users is never empty");
        let parsed = PasswordHash::new(&first.password_hash).map_err(HashError::Argon2)?;
        let params = Params::try_from(&parsed).map_err(HashError::Argon2)?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut random = [0u8; SALT_BYTES];
        getrandom::fill(&mut random).map_err(HashError::Rng)?;
        let dummy_password: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let dummy_hash = hash_with(&argon2, &dummy_password)?;
        // Every worker's buffer fits the largest memory cost among the users' hashes.
        let max_blocks = users
            .iter()
            .filter_map(|u| blocks_needed(&u.password_hash))
            .max()
            .unwrap_or_default();
        let pool = HashPool::start(workers, max_blocks).map_err(HashError::Workers)?;
        Ok(Self {
            by_name: users
                .iter()
                .map(|u| (u.username.clone(), u.clone()))
                .collect(),
            dummy_hash: dummy_hash.into(),
            pool,
        })
    }

    /// The user named `username`, if any (no password check: used for session lookups).
    pub fn user(&self, username: &str) -> Option<&User> {
        self.by_name.get(username)
    }

    /// The user if `password` is theirs. Unknown users cost one argon2 verification too.
    pub async fn verify(&self, username: &str, password: &str) -> Option<User> {
        let user = self.by_name.get(username).cloned();
        let hash = user.as_ref().map_or_else(
            || Arc::clone(&self.dummy_hash),
            |u| Arc::clone(&u.password_hash),
        );
        let matches = self.pool.verify(hash, password.to_owned()).await;
        user.filter(|_| matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$vCx7kaj57BS9+nGW4MZDHQ$DMtkq61ZYW/hVZueAbDUkL7LjuJEFl33xAyShGCSNC0";

    #[test]
    fn demo_users_parse() {
        let names: Vec<_> = Users::demo().iter().map(|u| u.username.clone()).collect();
        assert_eq!(
            names,
            ["behai_nguyen@hotmail.com", "pranav.furedi.10198@gmail.com"]
        );
    }

    #[test]
    fn comments_blank_lines_and_whitespace() {
        let text = format!("# users\n\n  a@example.com : A : B : {HASH}  \n");
        let users = Users::parse(&text).unwrap();
        let user = users.iter().next().unwrap();
        assert_eq!(
            (&*user.username, &*user.first_name, &*user.last_name),
            ("a@example.com", "A", "B")
        );
    }

    #[test]
    fn bad_files_name_line_and_field() {
        let argon2i = HASH.replace("argon2id", "argon2i");
        let cases: Vec<(String, UsersFileError)> = vec![
            (
                "# c\na@x:A:B\n".into(),
                UsersFileError::FieldCount { line: 2, found: 3 },
            ),
            (
                format!("a@x::B:{HASH}"),
                UsersFileError::EmptyField {
                    line: 1,
                    field: "first_name",
                },
            ),
            (
                format!("a b:A:B:{HASH}"),
                UsersFileError::UsernameWhitespace { line: 1 },
            ),
            (
                format!("a@x:A:B:{HASH}\na@x:C:D:{HASH}"),
                UsersFileError::Duplicate {
                    line: 2,
                    username: "a@x".into(),
                    first: 1,
                },
            ),
            ("\n# only comments\n".into(), UsersFileError::Empty),
        ];
        for (text, want) in cases {
            assert_eq!(Users::parse(&text).unwrap_err(), want, "input {text:?}");
        }
        for bad in [
            "plaintext",
            &argon2i,
            "$argon2id$v=19$m=1,t=1,p=1$c2FsdHNhbHQ$aGFzaA",
        ] {
            let err = Users::parse(&format!("\na@x:A:B:{bad}")).unwrap_err();
            assert!(
                matches!(err, UsersFileError::BadHash { line: 2, .. }),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains("argon2id_hash"), "{err}");
        }
    }

    #[tokio::test]
    async fn verify_right_wrong_and_unknown() {
        let hash = hash_password("s3cret").unwrap();
        let users = Users::parse(&format!("a@x:A:B:{hash}")).unwrap();
        let auth = Authenticator::new(&users, 1).unwrap();
        assert_eq!(
            auth.verify("a@x", "s3cret").await.map(|u| u.username),
            Some("a@x".to_owned())
        );
        assert!(auth.verify("a@x", "wrong").await.is_none());
        assert!(auth.verify("nobody@x", "s3cret").await.is_none());
    }

    #[test]
    fn debug_never_prints_the_hash() {
        let user = Users::demo().iter().next().unwrap().clone();
        assert!(!format!("{user:?}").contains("argon2"));
    }
}
