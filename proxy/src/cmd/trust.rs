//! `proxy cert --trust` and `--untrust`: the local CA installed in (or removed from) the places
//! browsers and tools look, each change printed, and each place left alone said why. On Linux:
//! the system store (Debian's `/usr/local/share/ca-certificates` and `update-ca-certificates`)
//! and the NSS databases (the user's `~/.pki/nssdb`, read by Chromium, and each Firefox profile's),
//! changed with `certutil` from libnss3-tools. On macOS and Windows: the commands to run.
//!
//! Where it installs and the programs it runs are [`TrustTargets`], read from the environment by
//! `main`, so that tests point them at temporary places.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;

use super::localca::{LocalCa, CA_NAME};
use crate::error::DevCertError;

/// The CA's file name in the system store directory.
pub const SYSTEM_CERT_FILE: &str = "proxy-dev-ca.crt";
/// Debian's and Ubuntu's directory for locally added CAs.
pub const DEFAULT_SYSTEM_DIR: &str = "/usr/local/share/ca-certificates";
/// The program that rebuilds the system store from that directory.
pub const DEFAULT_SYSTEM_UPDATE: &str = "update-ca-certificates";
/// Where `certutil` comes from, for the message when it is missing.
pub const CERTUTIL_PACKAGES: &str =
    "libnss3-tools on Debian/Ubuntu (apt-get install libnss3-tools), nss-tools on Fedora, nss on Arch";
/// The trust flags for a CA that identifies web sites (`C`: trusted CA for TLS servers).
const NSS_TRUST: &str = "C,,";
/// More certificates of our name than this in one NSS database is not something `--untrust`
/// made: it stops rather than loop.
const MAX_NSS_ENTRIES: usize = 16;

/// Where trust is installed and the programs that do it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustTargets {
    /// `std::env::consts::OS`: only `linux` installs; elsewhere the commands are printed.
    pub os: String,
    /// `certutil` (NSS), when found.
    pub certutil: Option<PathBuf>,
    /// The user's NSS database (Chromium's, created when missing).
    pub nss_db: Option<PathBuf>,
    /// The directory of Firefox profiles; each that has an NSS database gets the CA too.
    pub firefox_profiles: Option<PathBuf>,
    /// The system store's directory of added CAs, when there is one.
    pub system_dir: Option<PathBuf>,
    /// The program that rebuilds the system store, when found.
    pub system_update: Option<PathBuf>,
}

impl TrustTargets {
    /// The targets of a process with environment `env` on `os`: `PROXY_CERTUTIL`,
    /// `PROXY_TRUST_SYSTEM_DIR` and `PROXY_TRUST_SYSTEM_UPDATE` override the defaults (`certutil`
    /// and `update-ca-certificates` on `PATH`, `/usr/local/share/ca-certificates` if it exists);
    /// the NSS databases are under `HOME`.
    pub fn from_env(env: &HashMap<String, String>, os: &str) -> TrustTargets {
        let var = |name: &str| env.get(name).filter(|v| !v.is_empty());
        let path = env.get("PATH").map(String::as_str).unwrap_or_default();
        // update-ca-certificates is in /usr/sbin, which a user's PATH often lacks.
        let path_and_sbin = format!("{path}:/usr/sbin:/sbin");
        let home = var("HOME").map(PathBuf::from);
        TrustTargets {
            os: os.to_owned(),
            certutil: match var("PROXY_CERTUTIL") {
                Some(p) => Some(PathBuf::from(p)),
                None => find_program("certutil", path),
            },
            nss_db: home.as_ref().map(|h| h.join(".pki/nssdb")),
            firefox_profiles: home.as_ref().map(|h| h.join(".mozilla/firefox")),
            system_dir: match var("PROXY_TRUST_SYSTEM_DIR") {
                Some(p) => Some(PathBuf::from(p)),
                None => Some(PathBuf::from(DEFAULT_SYSTEM_DIR)).filter(|d| d.is_dir()),
            },
            system_update: match var("PROXY_TRUST_SYSTEM_UPDATE") {
                Some(p) => Some(PathBuf::from(p)),
                None => find_program(DEFAULT_SYSTEM_UPDATE, &path_and_sbin),
            },
        }
    }
}

/// The first `name` in the `:`-separated directories of `path` that is a file.
fn find_program(name: &str, path: &str) -> Option<PathBuf> {
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| candidate.is_file())
}

/// What happened at one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Changed(String),
    Unchanged(String),
    /// Not done, with why and what to do instead.
    Skipped(String),
    Failed(String),
}

/// One place and what happened there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub place: String,
    pub outcome: Outcome,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (word, text) = match &self.outcome {
            Outcome::Changed(t) => ("changed", t),
            Outcome::Unchanged(t) => ("unchanged", t),
            Outcome::Skipped(t) => ("skipped", t),
            Outcome::Failed(t) => ("FAILED", t),
        };
        write!(f, "{word:<9}  {}: {text}", self.place)
    }
}

fn step(place: impl Into<String>, outcome: Outcome) -> Step {
    Step {
        place: place.into(),
        outcome,
    }
}

/// `proxy cert --trust` (`trust`) or `--untrust`: prints each step; returns whether none failed.
pub fn run(data_dir: &Path, trust: bool, targets: &TrustTargets) -> Result<bool, DevCertError> {
    let steps = if trust {
        let (ca, created) = LocalCa::load_or_create(data_dir)?;
        let ca_path = data_dir.join(super::localca::CA_CERT_FILE);
        let state = if created { "made now" } else { "kept" };
        println!("local CA ({state}): {}", ca_path.display());
        install(&ca_path, &ca.cert_pem, targets)
    } else {
        uninstall(&data_dir.join(super::localca::CA_CERT_FILE), targets)
    };
    for step in &steps {
        println!("{step}");
    }
    Ok(!steps
        .iter()
        .any(|s| matches!(s.outcome, Outcome::Failed(_))))
}

/// Installs the CA (`ca_pem`, kept at `ca_path`) at every target.
pub fn install(ca_path: &Path, ca_pem: &str, targets: &TrustTargets) -> Vec<Step> {
    if let Some(commands) = other_os_commands(&targets.os, ca_path, true) {
        return vec![step(targets.os.as_str(), commands)];
    }
    let mut steps = vec![install_system(ca_path, ca_pem, targets)];
    steps.extend(each_nss_db(targets, |certutil, db| {
        install_nss(certutil, db, ca_path, ca_pem)
    }));
    steps
}

/// Removes the CA from every target.
pub fn uninstall(ca_path: &Path, targets: &TrustTargets) -> Vec<Step> {
    if let Some(commands) = other_os_commands(&targets.os, ca_path, false) {
        return vec![step(targets.os.as_str(), commands)];
    }
    let mut steps = vec![uninstall_system(targets)];
    steps.extend(each_nss_db(targets, uninstall_nss));
    steps
}

/// On macOS and Windows, what to run by hand (installing there needs the user's confirmation
/// or an administrator, which a command line tool should not work around).
fn other_os_commands(os: &str, ca_path: &Path, trust: bool) -> Option<Outcome> {
    let ca = ca_path.display();
    let command = match (os, trust) {
        ("linux", _) => return None,
        ("macos", true) => format!(
            "sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {ca}"
        ),
        ("macos", false) => format!(
            "sudo security delete-certificate -c \"{CA_NAME}\" /Library/Keychains/System.keychain"
        ),
        ("windows", true) => format!("certutil -addstore -user Root {ca}"),
        ("windows", false) => format!("certutil -delstore -user Root \"{CA_NAME}\""),
        _ => {
            return Some(Outcome::Skipped(
                "this system is not supported; see cert/README.md for trusting the CA by hand"
                    .into(),
            ))
        }
    };
    Some(Outcome::Skipped(format!(
        "only Linux is changed by this command; run: {command}"
    )))
}

const SYSTEM_PLACE: &str = "system store";

fn install_system(ca_path: &Path, ca_pem: &str, targets: &TrustTargets) -> Step {
    let Some(dir) = &targets.system_dir else {
        return step(
            SYSTEM_PLACE,
            Outcome::Skipped(format!(
                "no {DEFAULT_SYSTEM_DIR} (not Debian/Ubuntu): see cert/README.md for your system, \
                 or set PROXY_TRUST_SYSTEM_DIR and PROXY_TRUST_SYSTEM_UPDATE"
            )),
        );
    };
    let file = dir.join(SYSTEM_CERT_FILE);
    let place = format!("{SYSTEM_PLACE} {}", file.display());
    if std::fs::read_to_string(&file).is_ok_and(|existing| existing == ca_pem) {
        return step(place, Outcome::Unchanged("already installed".into()));
    }
    let Some(update) = &targets.system_update else {
        return step(
            place,
            Outcome::Skipped(format!(
                "{DEFAULT_SYSTEM_UPDATE} not found: install the ca-certificates package, or set \
                 PROXY_TRUST_SYSTEM_UPDATE"
            )),
        );
    };
    let sudo = format!(
        "sudo install -m 0644 {} {} && sudo {}",
        ca_path.display(),
        file.display(),
        update.display()
    );
    match std::fs::write(&file, ca_pem) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return step(place, Outcome::Skipped(needs_root(&sudo)))
        }
        Err(e) => return step(place, Outcome::Failed(format!("cannot write it: {e}"))),
    }
    match run_program(update, &[]) {
        Ok(_) => step(
            place,
            Outcome::Changed(format!("installed; ran {}", update.display())),
        ),
        Err(e) => step(place, Outcome::Failed(e)),
    }
}

fn uninstall_system(targets: &TrustTargets) -> Step {
    let Some(dir) = &targets.system_dir else {
        return step(
            SYSTEM_PLACE,
            Outcome::Unchanged(format!("no {DEFAULT_SYSTEM_DIR} (not Debian/Ubuntu)")),
        );
    };
    let file = dir.join(SYSTEM_CERT_FILE);
    let place = format!("{SYSTEM_PLACE} {}", file.display());
    if std::fs::symlink_metadata(&file).is_err() {
        return step(place, Outcome::Unchanged("not installed".into()));
    }
    let update = targets.system_update.as_deref();
    let update_name = update.map_or(DEFAULT_SYSTEM_UPDATE.into(), |u| u.display().to_string());
    match std::fs::remove_file(&file) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            let sudo = format!("sudo rm {} && sudo {update_name}", file.display());
            return step(place, Outcome::Skipped(needs_root(&sudo)));
        }
        Err(e) => return step(place, Outcome::Failed(format!("cannot remove it: {e}"))),
    }
    match update.map(|u| run_program(u, &[])) {
        Some(Ok(_)) => step(
            place,
            Outcome::Changed(format!("removed; ran {update_name}")),
        ),
        Some(Err(e)) => step(place, Outcome::Failed(e)),
        None => step(
            place,
            Outcome::Failed(format!(
                "removed, but {DEFAULT_SYSTEM_UPDATE} was not found to rebuild the store: install \
                 ca-certificates and run it"
            )),
        ),
    }
}

fn needs_root(sudo: &str) -> String {
    format!(
        "the system store needs root (your browsers' NSS databases below do not); run: {sudo} \
         (not `sudo proxy cert --trust`, which would change root's NSS database, not yours)"
    )
}

/// Runs `action` on every NSS database: the user's (which `--trust` creates when missing) and
/// each Firefox profile's that exists. Without `certutil`, one step says where to get it.
fn each_nss_db(targets: &TrustTargets, action: impl Fn(&Path, &Path) -> Outcome) -> Vec<Step> {
    let mut dbs: Vec<PathBuf> = Vec::new();
    if let Some(db) = &targets.nss_db {
        dbs.push(db.clone());
    }
    if let Some(dir) = &targets.firefox_profiles {
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut profiles: Vec<PathBuf> = entries
                .filter_map(|e| Some(e.ok()?.path()))
                .filter(|p| p.join("cert9.db").is_file())
                .collect();
            profiles.sort();
            dbs.extend(profiles);
        }
    }
    if dbs.is_empty() {
        return vec![step(
            "NSS database",
            Outcome::Skipped("no HOME, so no NSS database to change".into()),
        )];
    }
    let Some(certutil) = &targets.certutil else {
        return vec![step(
            "NSS database",
            Outcome::Skipped(format!(
                "certutil not found (Chromium and Firefox read these databases): install \
                 {CERTUTIL_PACKAGES}, or set PROXY_CERTUTIL"
            )),
        )];
    };
    dbs.into_iter()
        .map(|db| {
            let outcome = action(certutil, &db);
            step(format!("NSS database {}", db.display()), outcome)
        })
        .collect()
}

fn install_nss(certutil: &Path, db: &Path, ca_path: &Path, ca_pem: &str) -> Outcome {
    let sql = format!("sql:{}", db.display());
    let mut created = "";
    if !db.join("cert9.db").is_file() {
        if let Err(e) = create_db_dir(db) {
            return Outcome::Failed(format!("cannot create the directory: {e}"));
        }
        if let Err(e) = run_program(certutil, &["-N", "-d", &sql, "--empty-password"]) {
            return Outcome::Failed(e);
        }
        created = "created the database; ";
    }
    // What the database holds under our name: the same CA (nothing to do), or an older one
    // (replaced, since a name lists every certificate added under it).
    let ours: Vec<Vec<u8>> = der_certs(ca_pem.as_bytes());
    let held = run_program(certutil, &["-L", "-d", &sql, "-n", CA_NAME, "-a"])
        .map(|pem| der_certs(pem.as_bytes()))
        .unwrap_or_default();
    if !held.is_empty() && held == ours {
        return Outcome::Unchanged(format!("{created}\"{CA_NAME}\" already trusted"));
    }
    let replaced = delete_nss(certutil, &sql);
    let ca = ca_path.display().to_string();
    let added = run_program(
        certutil,
        &["-A", "-d", &sql, "-t", NSS_TRUST, "-n", CA_NAME, "-i", &ca],
    );
    match (added, replaced) {
        (Err(e), _) => Outcome::Failed(e),
        (Ok(_), 0) => Outcome::Changed(format!("{created}added \"{CA_NAME}\" (trust {NSS_TRUST})")),
        (Ok(_), n) => Outcome::Changed(format!(
            "{created}replaced {n} older certificate(s) named \"{CA_NAME}\" with this CA"
        )),
    }
}

fn uninstall_nss(certutil: &Path, db: &Path) -> Outcome {
    if !db.join("cert9.db").is_file() {
        return Outcome::Unchanged("no database".into());
    }
    match delete_nss(certutil, &format!("sql:{}", db.display())) {
        0 => Outcome::Unchanged(format!("\"{CA_NAME}\" was not there")),
        n => Outcome::Changed(format!("removed \"{CA_NAME}\" ({n} certificate(s))")),
    }
}

/// Deletes every certificate named [`CA_NAME`] (one per `certutil -D`); returns how many.
fn delete_nss(certutil: &Path, sql: &str) -> usize {
    (0..MAX_NSS_ENTRIES)
        .take_while(|_| run_program(certutil, &["-D", "-d", sql, "-n", CA_NAME]).is_ok())
        .count()
}

fn create_db_dir(db: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(db)
}

fn der_certs(pem: &[u8]) -> Vec<Vec<u8>> {
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .map(|c| c.to_vec())
        .collect()
}

/// Runs `program` with `args`; its stdout on success, else what went wrong with its stderr.
fn run_program(program: &Path, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(format!(
        "{} {} failed ({}): {}",
        program.display(),
        args.first().copied().unwrap_or_default(),
        output.status,
        stderr.trim()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("proxy-trust-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn targets(system_dir: Option<PathBuf>, update: Option<PathBuf>) -> TrustTargets {
        TrustTargets {
            os: "linux".into(),
            certutil: None,
            nss_db: None,
            firefox_profiles: None,
            system_dir,
            system_update: update,
        }
    }

    #[test]
    fn targets_from_env() {
        let bin = temp_dir("bin");
        std::fs::write(bin.join("certutil"), "").unwrap();
        let env: HashMap<String, String> = [
            ("HOME", "/home/u"),
            ("PATH", bin.to_str().unwrap()),
            ("PROXY_TRUST_SYSTEM_DIR", "/tmp/sys"),
            ("PROXY_TRUST_SYSTEM_UPDATE", "/bin/true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let t = TrustTargets::from_env(&env, "linux");
        assert_eq!(t.certutil, Some(bin.join("certutil")));
        assert_eq!(t.nss_db, Some(PathBuf::from("/home/u/.pki/nssdb")));
        assert_eq!(
            t.firefox_profiles,
            Some(PathBuf::from("/home/u/.mozilla/firefox"))
        );
        assert_eq!(t.system_dir, Some(PathBuf::from("/tmp/sys")));
        assert_eq!(t.system_update, Some(PathBuf::from("/bin/true")));
        let bare = TrustTargets::from_env(&HashMap::new(), "linux");
        assert_eq!((bare.certutil, bare.nss_db), (None, None));
    }

    #[test]
    fn system_store_install_and_removal() {
        let dir = temp_dir("system");
        let ca = dir.join("ca.pem");
        let t = targets(Some(dir.clone()), Some(PathBuf::from("/bin/true")));
        let installed = install_system(&ca, "PEM", &t);
        assert!(
            matches!(installed.outcome, Outcome::Changed(_)),
            "{installed}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join(SYSTEM_CERT_FILE)).unwrap(),
            "PEM"
        );
        let again = install_system(&ca, "PEM", &t);
        assert!(matches!(again.outcome, Outcome::Unchanged(_)), "{again}");
        let removed = uninstall_system(&t);
        assert!(matches!(removed.outcome, Outcome::Changed(_)), "{removed}");
        assert!(!dir.join(SYSTEM_CERT_FILE).exists());
        let gone = uninstall_system(&t);
        assert!(matches!(gone.outcome, Outcome::Unchanged(_)), "{gone}");
        // A failing update command is reported, not hidden.
        let failing = targets(Some(dir.clone()), Some(PathBuf::from("/bin/false")));
        let failed = install_system(&ca, "PEM", &failing);
        assert!(matches!(failed.outcome, Outcome::Failed(_)), "{failed}");
    }

    #[test]
    fn missing_places_and_tools_are_explained() {
        let home = temp_dir("home");
        let mut t = targets(None, None);
        t.nss_db = Some(home.join(".pki/nssdb"));
        let steps = install(Path::new("/x/ca.pem"), "PEM", &t);
        let text: Vec<String> = steps.iter().map(ToString::to_string).collect();
        assert!(text[0].contains("PROXY_TRUST_SYSTEM_DIR"), "{text:?}");
        assert!(text[1].contains("libnss3-tools"), "{text:?}");
        assert!(steps
            .iter()
            .all(|s| matches!(s.outcome, Outcome::Skipped(_))));
        for (os, command) in [
            ("macos", "security add-trusted-cert"),
            ("windows", "certutil -addstore"),
        ] {
            t.os = os.into();
            let steps = install(Path::new("/x/ca.pem"), "PEM", &t);
            assert!(steps[0].to_string().contains(command), "{}", steps[0]);
        }
    }
}
