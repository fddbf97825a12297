//! Talking to the CA with instant-acme: the HTTPS client (rustls on the proxy's aws-lc-rs
//! provider; the system's roots, or only `PROXY_ACME_CA_ROOT` for a private CA), which notes the
//! CA's `Retry-After` answers, the account (made once, then reused), and one order from
//! authorization to the downloaded chain.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::Request;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType, HttpClient,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tracing::info;

use super::challenge::{tls_alpn_01_key, Http01Tokens};
use super::settings::{AcmeSettings, Challenge};
use super::store::AcmeFiles;
use super::AcmeError;
use crate::tls::CertStore;

/// How long one order may take from readiness to the issued certificate, polling with backoff.
const ORDER_POLL_TIMEOUT: Duration = Duration::from_secs(120);
/// Each request to the CA must be answered within this time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP client instant-acme sends its requests with.
struct CaHttp {
    client: Client<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    /// Where the latest `Retry-After` the CA sent with an error goes (RFC 8555 §6.6: rate
    /// limits).
    retry_after: Arc<Mutex<Option<SystemTime>>>,
}

impl HttpClient for CaHttp {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let sent = self.client.request(req);
        let retry_after = Arc::clone(&self.retry_after);
        Box::pin(async move {
            let response = tokio::time::timeout(REQUEST_TIMEOUT, sent)
                .await
                .map_err(|_| {
                    instant_acme::Error::Other(
                        format!("no answer from the CA within {REQUEST_TIMEOUT:?}").into(),
                    )
                })?
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            let status = response.status();
            if status.is_client_error() || status.is_server_error() {
                if let Some(at) = parse_retry_after(response.headers().get(RETRY_AFTER)) {
                    *retry_after.lock().unwrap_or_else(PoisonError::into_inner) = Some(at);
                }
            }
            Ok(BytesResponse::from(response))
        })
    }
}

/// `Retry-After` in seconds (the form ACME servers send); an HTTP date is ignored, and the
/// caller's own backoff applies.
fn parse_retry_after(value: Option<&http::HeaderValue>) -> Option<SystemTime> {
    let secs: u64 = value?.to_str().ok()?.trim().parse().ok()?;
    Some(SystemTime::now() + Duration::from_secs(secs))
}

/// The HTTPS connector for the CA: the proxy's provider, and the roots in `ca_root` only when
/// given, else the platform's.
fn connector(
    provider: Arc<CryptoProvider>,
    ca_root: Option<&std::path::Path>,
) -> Result<HttpsConnector<HttpConnector>, AcmeError> {
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let Some(path) = ca_root else {
        let builder = builder
            .with_provider_and_platform_verifier(provider)
            .map_err(|e| AcmeError::Client(format!("the system's root certificates: {e}")))?;
        return Ok(builder.https_only().enable_http1().enable_http2().build());
    };
    let bad_root = |detail: String| AcmeError::CaRoot {
        path: path.to_owned(),
        detail,
    };
    let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad_root(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad_root(e.to_string()))?;
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(roots);
    if added == 0 {
        return Err(bad_root("no usable PEM certificate in it".into()));
    }
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AcmeError::Client(e.to_string()))?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(builder
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build())
}

/// An ACME account at one CA, ready to order.
pub struct CaClient {
    account: Account,
}

impl CaClient {
    /// Opens the stored account at the CA, or registers one (agreeing to the CA's terms of
    /// service) and stores it.
    pub async fn connect(
        settings: &AcmeSettings,
        files: &AcmeFiles,
        provider: Arc<CryptoProvider>,
        retry_after: Arc<Mutex<Option<SystemTime>>>,
    ) -> Result<CaClient, AcmeError> {
        let connector = connector(provider, settings.ca_root.as_deref())?;
        let http = || -> Box<dyn HttpClient> {
            Box::new(CaHttp {
                client: Client::builder(TokioExecutor::new()).build(connector.clone()),
                retry_after: Arc::clone(&retry_after),
            })
        };
        let account = match files.load_account()? {
            Some(credentials) => Account::builder_with_http(http())
                .from_credentials(credentials)
                .await
                .map_err(|e| AcmeError::Ca {
                    step: "open the stored account",
                    source: e,
                })?,
            None => {
                let contact: Vec<&str> = settings.contact.as_deref().into_iter().collect();
                let (account, credentials) = Account::builder_with_http(http())
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        settings.directory.clone(),
                        None,
                    )
                    .await
                    .map_err(|e| AcmeError::Ca {
                        step: "register an account",
                        source: e,
                    })?;
                files.save_account(&credentials)?;
                info!(directory = %settings.directory, account = %account.id(), "acme account registered");
                account
            }
        };
        Ok(CaClient { account })
    }

    /// Orders a certificate for the settings' domains and answers the challenges; returns the
    /// chain and its new key, both PEM. Challenge answers are withdrawn whatever the outcome.
    pub async fn issue(
        &self,
        settings: &AcmeSettings,
        certs: &CertStore,
        http01: &Http01Tokens,
    ) -> Result<(String, String), AcmeError> {
        let mut answered = Answered::new(certs, http01);
        let result = self.issue_inner(settings, certs, &mut answered).await;
        answered.withdraw();
        result
    }

    async fn issue_inner(
        &self,
        settings: &AcmeSettings,
        certs: &CertStore,
        answered: &mut Answered<'_>,
    ) -> Result<(String, String), AcmeError> {
        let ca = |step: &'static str| move |source| AcmeError::Ca { step, source };
        let identifiers: Vec<Identifier> = settings
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let mut order = self
            .account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(ca("create an order"))?;
        info!(order = %order.url(), domains = %settings.domains.join(","), "acme order created");
        let wanted = match settings.challenge {
            Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            Challenge::Http01 => ChallengeType::Http01,
        };
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(ca("fetch an authorization"))?;
            if authz.status != AuthorizationStatus::Pending {
                continue;
            }
            let Some(mut challenge) = authz.challenge(wanted.clone()) else {
                return Err(AcmeError::NoChallenge {
                    challenge: settings.challenge.as_str(),
                });
            };
            let name = challenge.identifier().to_string();
            let key_authorization = challenge.key_authorization();
            match settings.challenge {
                Challenge::TlsAlpn01 => {
                    let key = tls_alpn_01_key(
                        &name,
                        key_authorization.digest().as_ref(),
                        certs.provider(),
                    )?;
                    certs.set_tls_alpn_challenge(&name, key);
                    answered.names.push(name.clone());
                }
                Challenge::Http01 => {
                    let token = challenge.token.clone();
                    answered.http01.insert(&token, key_authorization.as_str());
                    answered.tokens.push(token);
                }
            }
            challenge
                .set_ready()
                .await
                .map_err(ca("tell the CA the challenge is ready"))?;
            info!(domain = %name, challenge = settings.challenge.as_str(), "acme challenge ready; the CA validates now");
        }
        let retries = RetryPolicy::new().timeout(ORDER_POLL_TIMEOUT);
        let status = order
            .poll_ready(&retries)
            .await
            .map_err(ca("wait for the validation"))?;
        if status != OrderStatus::Ready {
            return Err(AcmeError::OrderFailed {
                status: format!("{status:?}"),
                detail: order
                    .state()
                    .error
                    .as_ref()
                    .map_or_else(|| "no detail from the CA".to_owned(), ToString::to_string),
            });
        }
        let (csr, key_pem) = csr(&settings.domains)?;
        order
            .finalize_csr(&csr)
            .await
            .map_err(ca("finalize the order"))?;
        let chain = order
            .poll_certificate(&retries)
            .await
            .map_err(ca("download the certificate"))?;
        Ok((chain, key_pem))
    }
}

/// A certificate signing request for `domains` with a new P-256 key (a fresh key per
/// certificate), and that key in PEM.
fn csr(domains: &[String]) -> Result<(Vec<u8>, String), AcmeError> {
    let failed = |e: rcgen::Error| AcmeError::Csr(e.to_string());
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(failed)?;
    let mut params = CertificateParams::new(domains.to_vec()).map_err(failed)?;
    params.distinguished_name = DistinguishedName::new();
    let request = params.serialize_request(&key).map_err(failed)?;
    Ok((request.der().to_vec(), key.serialize_pem()))
}

/// The challenge answers published for one order, withdrawn when it ends.
struct Answered<'a> {
    certs: &'a CertStore,
    http01: &'a Http01Tokens,
    names: Vec<String>,
    tokens: Vec<String>,
}

impl<'a> Answered<'a> {
    fn new(certs: &'a CertStore, http01: &'a Http01Tokens) -> Self {
        Answered {
            certs,
            http01,
            names: Vec::new(),
            tokens: Vec::new(),
        }
    }

    fn withdraw(&mut self) {
        for name in self.names.drain(..) {
            self.certs.clear_tls_alpn_challenge(&name);
        }
        for token in self.tokens.drain(..) {
            self.http01.remove(&token);
        }
    }
}
