//! The HTTP side of the webhook audit sink (issue #18): POSTs a batch as JSON, signed the
//! Standard Webhooks way (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64
//! HMAC-SHA256 of "id.timestamp.body">` under the `whsec_` secret), so receivers verify it with
//! the stock libraries. Here because only `web/` speaks HTTP; the sink runner (`sinks/`) decides
//! what goes and when.

use std::time::Duration;

use base64::Engine;
use hmac::Mac;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::secret::Secret;

/// How long one POST may take before it counts as a timeout (retried).
const TIMEOUT: Duration = Duration::from_secs(30);
/// The most of a receiver's answer read (it is dropped anyway).
const RESPONSE_LIMIT: usize = 64 * 1024;

/// How a POST went.
#[derive(Debug)]
pub enum Posted {
    Accepted,
    /// 5xx, a timeout or a network error: worth retrying.
    Retry(String),
    /// 4xx: the receiver refuses this batch; sending it again would not help.
    Refused(String),
}

pub struct WebhookClient {
    url: hyper::Uri,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<bytes::Bytes>>,
    /// The HMAC key: the secret's base64 part after `whsec_`.
    key: Secret<Vec<u8>>,
    headers: Vec<(String, String)>,
    authorization: Option<Secret<String>>,
}

impl WebhookClient {
    /// `secret` is a Standard Webhooks secret (`whsec_` and base64).
    pub fn new(
        url: &str,
        secret: &Secret<String>,
        headers: Vec<(String, String)>,
        authorization: Option<Secret<String>>,
    ) -> Result<WebhookClient, String> {
        let url: hyper::Uri = url
            .parse()
            .map_err(|_| "the webhook URL is not a URL".to_string())?;
        let encoded = secret
            .expose()
            .strip_prefix("whsec_")
            .ok_or("the webhook secret must start with whsec_")?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| "the webhook secret is not whsec_ and base64".to_string())?;
        use hyper_rustls::ConfigBuilderExt;
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|error| error.to_string())?
        .with_native_roots()
        .map_err(|error| format!("no system CA roots: {error}"))?
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(WebhookClient {
            url,
            client: Client::builder(TokioExecutor::new()).build(connector),
            key: Secret::new(key),
            headers,
            authorization,
        })
    }

    /// POSTs `body` with the Standard Webhooks headers for `id` at `timestamp` (Unix seconds).
    pub async fn post(&self, id: &str, timestamp: i64, body: Vec<u8>) -> Posted {
        let signature = match self.sign(id, timestamp, &body) {
            Ok(signature) => signature,
            Err(why) => return Posted::Refused(why),
        };
        let mut request = hyper::Request::post(self.url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature);
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some(authorization) = &self.authorization {
            request = request.header("authorization", authorization.expose().as_str());
        }
        let request = match request.body(Full::new(bytes::Bytes::from(body))) {
            Ok(request) => request,
            Err(_) => return Posted::Refused("a configured header is not valid HTTP".to_string()),
        };
        let response = match tokio::time::timeout(TIMEOUT, self.client.request(request)).await {
            Err(_) => return Posted::Retry("the webhook timed out".to_string()),
            Ok(Err(error)) => return Posted::Retry(format!("cannot reach the webhook: {error}")),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        // The body is read (and dropped) so the connection can be reused; a receiver's words are
        // not kept.
        let _ = tokio::time::timeout(
            TIMEOUT,
            http_body_util::Limited::new(response.into_body(), RESPONSE_LIMIT).collect(),
        )
        .await;
        if status.is_success() {
            Posted::Accepted
        } else if status.is_client_error() {
            Posted::Refused(format!("the webhook answered {status}"))
        } else {
            Posted::Retry(format!("the webhook answered {status}"))
        }
    }

    fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> Result<String, String> {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.key.expose())
            .map_err(|_| "the webhook secret is not a usable key".to_string())?;
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        Ok(format!("v1,{signature}"))
    }
}
