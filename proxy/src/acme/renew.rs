//! The background task: waits until the certificate is due (or absent), obtains a new one, swaps
//! it in, and on failure keeps the current one serving and retries with capped exponential
//! backoff, never before the CA's `Retry-After`.

use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime};

use tracing::{error, info};

use super::client::CaClient;
use super::store::{covers, renewal_due};
use super::{Acme, AcmeError};
use crate::tls::{rfc3339, CertInfo, CertStore};

/// The first retry after a failure; doubled after each further failure.
const FIRST_RETRY: Duration = Duration::from_secs(60);
/// The longest wait between retries: a CA outage costs at most this much extra delay once it
/// ends, and Let's Encrypt's failed-validation limit (5 an hour per name) is never reached.
const MAX_RETRY: Duration = Duration::from_secs(6 * 60 * 60);
/// The clock is read again at least this often while waiting for the renewal date, so a
/// suspended host or a changed clock cannot make the task oversleep the renewal.
const RECHECK: Duration = Duration::from_secs(60 * 60);

/// Runs until aborted.
pub(super) async fn run(acme: Arc<Acme>, certs: Arc<CertStore>) {
    let mut client: Option<CaClient> = None;
    let mut backoff = FIRST_RETRY;
    let mut retrying = false;
    loop {
        if !retrying {
            wait_until_due(&acme, &certs).await;
        }
        match attempt(&acme, &certs, &mut client).await {
            Ok(info) => {
                retrying = false;
                backoff = FIRST_RETRY;
                info!(
                    domains = %acme.settings.domains.join(","),
                    not_after = %info.not_after_rfc3339(),
                    renew_at = %rfc3339(renewal_due(&info)),
                    "acme: certificate issued and in use"
                );
                acme.status.send_modify(|s| {
                    s.issued += 1;
                    s.last_error = None;
                });
            }
            Err(e) => {
                // A fresh account lookup next time: the failure may be the account's.
                client = None;
                let retry_after = acme
                    .retry_after
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                let wait = retry_wait(backoff, retry_after, SystemTime::now());
                let serving = certs.info().map_or_else(
                    || "none (handshakes fail until one is issued)".to_owned(),
                    |info| format!("the current one, valid until {}", info.not_after_rfc3339()),
                );
                error!(
                    error = %e,
                    retry_in_secs = wait.as_secs(),
                    ca_retry_after = retry_after.is_some(),
                    serving = %serving,
                    "acme: certificate not obtained; retrying later"
                );
                acme.status.send_modify(|s| {
                    s.failed += 1;
                    s.last_error = Some(e.to_string());
                });
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = acme.renew_now.notified() => {}
                }
                retrying = true;
                backoff = (backoff * 2).min(MAX_RETRY);
            }
        }
    }
}

/// The wait before the next attempt: the backoff, or longer when the CA said so.
fn retry_wait(backoff: Duration, retry_after: Option<SystemTime>, now: SystemTime) -> Duration {
    let asked = retry_after
        .and_then(|at| at.duration_since(now).ok())
        .unwrap_or(Duration::ZERO);
    backoff.max(asked)
}

/// Returns once a new certificate is needed: none is loaded, it does not cover the names, it is
/// past two thirds of its lifetime, or [`Acme::renew_now`] was called.
async fn wait_until_due(acme: &Acme, certs: &CertStore) {
    let settings = &acme.settings;
    loop {
        let due = match certs.info() {
            None => {
                info!(
                    domains = %settings.domains.join(","),
                    directory = %settings.directory,
                    challenge = settings.challenge.as_str(),
                    "acme: waiting for the first certificate from the CA; ordering it now \
                     (TLS handshakes fail until it is issued)"
                );
                return;
            }
            Some(info) if !covers(&info, &settings.domains) => {
                info!(
                    sans = %info.sans.join(","),
                    domains = %settings.domains.join(","),
                    "acme: the stored certificate does not cover every domain; ordering a new one"
                );
                return;
            }
            Some(info) => renewal_due(&info),
        };
        let now = SystemTime::now();
        let Ok(left) = due.duration_since(now) else {
            info!(due = %rfc3339(due), "acme: certificate due for renewal; renewing now");
            return;
        };
        log_scheduled(certs.info().as_ref(), due);
        tokio::select! {
            () = tokio::time::sleep(left.min(RECHECK)) => {}
            () = acme.renew_now.notified() => {
                info!("acme: renewal requested; renewing now");
                return;
            }
        }
    }
}

fn log_scheduled(info: Option<&CertInfo>, due: SystemTime) {
    if let Some(info) = info {
        info!(
            not_after = %info.not_after_rfc3339(),
            renew_at = %rfc3339(due),
            "acme: certificate valid; renewal scheduled"
        );
    }
}

/// One attempt: the account (opened once and kept), an order, the files, the swap.
async fn attempt(
    acme: &Acme,
    certs: &CertStore,
    client: &mut Option<CaClient>,
) -> Result<CertInfo, AcmeError> {
    let ca = match client {
        Some(ca) => ca,
        None => client.insert(
            CaClient::connect(
                &acme.settings,
                &acme.files,
                Arc::clone(certs.provider()),
                Arc::clone(&acme.retry_after),
            )
            .await?,
        ),
    };
    let (chain, key) = ca.issue(&acme.settings, certs, &acme.http01).await?;
    acme.files.save_pair(&chain, &key)?;
    certs.reload_logged("acme").map_err(AcmeError::Install)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_waits_for_the_longer_of_backoff_and_retry_after() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let minute = Duration::from_secs(60);
        assert_eq!(retry_wait(minute, None, now), minute);
        assert_eq!(
            retry_wait(minute, Some(now + 10 * minute), now),
            10 * minute
        );
        assert_eq!(retry_wait(minute, Some(now - minute), now), minute);
    }
}
