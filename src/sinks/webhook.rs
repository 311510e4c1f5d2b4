//! The webhook sink: each batch POSTed as one JSON object, `{"events": [...], "chain_head":
//! {"seq", "hash"}}`, signed the Standard Webhooks way (the HTTP side is `web::webhook_sink`).
//! A 5xx or a timeout is retried with backoff; a 4xx is not: the receiver refuses the batch,
//! the refusal is audited (`sink.refused`) and the sink holds at that batch, as `audit sinks`
//! shows, until an operator fixes the receiver or the config and restarts the bastion. The
//! `webhook-id` of a batch is the same on every attempt, and each event keeps its own id.

use serde_json::json;

use super::{Batch, SinkError};
use crate::config::SinkFormat;
use crate::secret::SecretSource;
use crate::web::webhook_sink::{Posted, WebhookClient};

pub(super) struct WebhookSink {
    name: String,
    format: SinkFormat,
    url: String,
    secret: SecretSource,
    headers: Vec<(String, String)>,
    authorization: Option<SecretSource>,
    client: Option<WebhookClient>,
}

impl WebhookSink {
    pub(super) fn new(
        name: &str,
        format: SinkFormat,
        url: &str,
        secret: &SecretSource,
        headers: &[(String, String)],
        authorization: Option<&SecretSource>,
    ) -> WebhookSink {
        WebhookSink {
            name: name.to_string(),
            format,
            url: url.to_string(),
            secret: secret.clone(),
            headers: headers.to_vec(),
            authorization: authorization.cloned(),
            client: None,
        }
    }

    pub(super) async fn deliver(&mut self, batch: &Batch) -> Result<(), SinkError> {
        if self.client.is_none() {
            let secret = self
                .secret
                .read()
                .map_err(|error| SinkError::Io(format!("the webhook secret: {error}")))?;
            let authorization = match &self.authorization {
                Some(source) => Some(source.read().map_err(|error| {
                    SinkError::Io(format!("the webhook authorization: {error}"))
                })?),
                None => None,
            };
            let client =
                WebhookClient::new(&self.url, &secret, self.headers.clone(), authorization)
                    .map_err(SinkError::Io)?;
            self.client = Some(client);
        }
        let Some(client) = &self.client else {
            return Err(SinkError::Io("no webhook client".to_string()));
        };
        let events: Vec<serde_json::Value> = batch
            .events
            .iter()
            .map(|event| event.render(self.format))
            .collect();
        let body = json!({
            "events": events,
            "chain_head": batch.head.as_ref().map(|head| json!({ "seq": head.seq, "hash": head.hash })),
        });
        let body = serde_json::to_vec(&body).map_err(|error| SinkError::Io(error.to_string()))?;
        let id = format!("{}-{}-{}", self.name, batch.from, batch.up_to);
        match client.post(&id, batch.now.unix_timestamp(), body).await {
            Posted::Accepted => Ok(()),
            Posted::Retry(why) => Err(SinkError::Io(why)),
            Posted::Refused(why) => Err(SinkError::Refused(why)),
        }
    }
}
