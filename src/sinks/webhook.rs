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

/// The most JSON of events one POST carries (one larger event goes alone).
const MAX_BODY: usize = 1024 * 1024;

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
        // A batch goes in parts of at most MAX_BODY of events (issue #18 review: one second of
        // large statements made a body a receiver refuses with 413, which held the sink for
        // good). The parts of a batch are the same on every attempt, with the same ids.
        let chain_head = batch
            .head
            .as_ref()
            .map(|head| json!({ "seq": head.seq, "hash": head.hash }));
        let rendered = batch.events.iter().map(|event| event.render(self.format));
        let parts = split(rendered, MAX_BODY);
        let count = parts.len();
        for (index, events) in parts.into_iter().enumerate() {
            let body = json!({ "events": events, "chain_head": chain_head });
            let body =
                serde_json::to_vec(&body).map_err(|error| SinkError::Io(error.to_string()))?;
            let mut id = format!("{}-{}-{}", self.name, batch.from, batch.up_to);
            if count > 1 {
                id.push_str(&format!("-{}", index + 1));
            }
            match client.post(&id, batch.now.unix_timestamp(), body).await {
                Posted::Accepted => {}
                Posted::Retry(why) => return Err(SinkError::Io(why)),
                Posted::Refused(why) => return Err(SinkError::Refused(why)),
            }
        }
        Ok(())
    }
}

/// Events in order, in parts of at most `max` bytes of JSON each (an event larger than that
/// goes alone); always at least one part, so an empty batch still carries the chain head.
fn split(
    events: impl Iterator<Item = serde_json::Value>,
    max: usize,
) -> Vec<Vec<serde_json::Value>> {
    let mut parts: Vec<Vec<serde_json::Value>> = vec![Vec::new()];
    let mut size = 0usize;
    for event in events {
        let length = event.to_string().len();
        if size + length > max && parts.last().is_some_and(|part| !part.is_empty()) {
            parts.push(Vec::new());
            size = 0;
        }
        size += length;
        if let Some(part) = parts.last_mut() {
            part.push(event);
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_go_in_parts_under_the_limit_in_order() {
        let event = |n: usize, size: usize| json!({ "n": n, "pad": "x".repeat(size) });
        let sizes = [10, 10, 100, 10, 10, 10];
        let parts = split(
            sizes.iter().enumerate().map(|(n, size)| event(n, *size)),
            60,
        );
        let numbers: Vec<Vec<u64>> = parts
            .iter()
            .map(|part| {
                part.iter()
                    .map(|event| event["n"].as_u64().unwrap())
                    .collect()
            })
            .collect();
        // Each small event is 29 bytes of JSON: two fit in 60; the large one goes alone.
        assert_eq!(numbers, vec![vec![0, 1], vec![2], vec![3, 4], vec![5]]);
        assert_eq!(split(std::iter::empty(), 60).len(), 1);
    }
}
