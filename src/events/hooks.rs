//! Creating webhooks: the URL rules checked at creation, the event types, and the secret,
//! drawn here, shown once, and stored so that it can sign (sealed with the current
//! encryption-at-rest key when the keyring is on).
//!
//! Invariant: the secret's text leaves this module only in the creation's answer; it is never
//! logged or audited.

use std::sync::Arc;

use zeroize::Zeroizing;

use super::guard::{Policy, UrlError, check_url};
use super::{ALL, Kind, sign};
use crate::crypto::{DataKey, Keyring, Sealing};
use crate::ids::{FileId, Timestamp, UserId, WebhookId};
use crate::meta::events::{NewWebhook, Webhook, WebhookStored};
use crate::meta::{MetaError, MetaStore};

/// Why a webhook was not created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The URL breaks a rule (422, field `url`).
    #[error("url {0}")]
    Url(#[from] UrlError),
    /// An unknown event type, or none (422, field `events`).
    #[error("events: {0}")]
    Events(String),
    /// The owner is gone.
    #[error("the owner is gone")]
    OwnerGone,
    /// The owner has `webhooks.max_per_user` webhooks already (422).
    #[error("at most {0} webhooks per account (webhooks.max_per_user); delete one first")]
    TooMany(u64),
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// What creating webhooks needs.
#[derive(Clone)]
pub struct Webhooks {
    /// Where they are stored.
    pub meta: MetaStore,
    /// Seals secrets at rest when encryption is on.
    pub keyring: Arc<Keyring>,
    /// `webhooks.allow_http`, `webhooks.allow_private_targets`.
    pub policy: Policy,
    /// `webhooks.max_per_user`.
    pub max_per_user: u64,
}

/// The event types asked for: all of them when `None`; each known, at least one, in the
/// contract's order.
pub fn event_types(asked: Option<&[String]>) -> Result<Vec<String>, CreateError> {
    let Some(asked) = asked else {
        return Ok(ALL.iter().map(|k| k.name().to_owned()).collect());
    };
    if asked.is_empty() {
        return Err(CreateError::Events(
            "must name at least one event type".into(),
        ));
    }
    if let Some(bad) = asked.iter().find(|e| Kind::parse(e).is_none()) {
        let known: Vec<&str> = ALL.iter().map(|k| k.name()).collect();
        return Err(CreateError::Events(format!(
            "unknown event type {:?} (known: {})",
            bad.chars().take(64).collect::<String>(),
            known.join(", ")
        )));
    }
    Ok(ALL
        .iter()
        .map(|k| k.name())
        .filter(|n| asked.iter().any(|a| a == n))
        .map(str::to_owned)
        .collect())
}

impl Webhooks {
    /// Create a webhook for `owner`: the stored webhook and its secret's text (shown once).
    pub async fn create(
        &self,
        owner: UserId,
        url: &str,
        events: Option<&[String]>,
    ) -> Result<(Webhook, String), CreateError> {
        let url = check_url(url, self.policy)?;
        let events = event_types(events)?;
        let id = WebhookId::new();
        let secret = sign::generate();
        let text = sign::encode(&*secret);
        let (stored, key_id) = match self.seal(id, &secret) {
            Some(s) => (s.wrapped_key, Some(s.key_id)),
            None => (secret.to_vec(), None),
        };
        let hook = Webhook {
            id,
            url: url.to_string(),
            events,
            created_at: Timestamp::now(),
        };
        let row = NewWebhook {
            hook: hook.clone(),
            owner,
            secret: stored,
            secret_key_id: key_id,
        };
        match self
            .meta
            .outbox()
            .create_webhook(row, self.max_per_user)
            .await?
        {
            WebhookStored::Stored => Ok((hook, text)),
            WebhookStored::OwnerGone => Err(CreateError::OwnerGone),
            WebhookStored::TooMany => Err(CreateError::TooMany(self.max_per_user)),
        }
    }

    fn seal(&self, id: WebhookId, secret: &Zeroizing<[u8; 32]>) -> Option<Sealing> {
        // Wrapped like a file's data key, bound to the webhook's id.
        self.keyring
            .wrap(FileId(id.0), &DataKey::from_bytes(**secret))
    }
}

/// The host (and port) of a webhook URL, for the audit trail: never its path or query, which
/// may carry the backend's own token.
pub fn url_host(url: &str) -> Option<String> {
    let u = reqwest::Url::parse(url).ok()?;
    let host = u.host_str()?;
    Some(match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    })
}

/// The secret's bytes from what is stored: unsealed with the keyring when a key id is set.
pub fn unseal(
    keyring: &Keyring,
    id: WebhookId,
    stored: &[u8],
    key_id: Option<&str>,
) -> Option<Zeroizing<Vec<u8>>> {
    match key_id {
        None => Some(Zeroizing::new(stored.to_vec())),
        Some(key_id) => {
            let sealing = Sealing {
                key_id: key_id.to_owned(),
                wrapped_key: stored.to_vec(),
            };
            let key = keyring.unwrap(FileId(id.0), &sealing).ok()?;
            Some(Zeroizing::new(key.bytes().to_vec()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_default_to_all_and_refuse_unknown_ones() {
        assert_eq!(event_types(None).unwrap().len(), ALL.len());
        let asked = vec!["link.used".to_owned(), "file.created".to_owned()];
        assert_eq!(
            event_types(Some(&asked)).unwrap(),
            vec!["file.created", "link.used"]
        );
        assert!(event_types(Some(&[])).is_err());
        assert!(event_types(Some(&["file.*".to_owned()])).is_err());
    }

    #[test]
    fn a_sealed_secret_unseals_only_for_its_webhook() {
        let keyring = Keyring::new(Some([7u8; 32]), &[]).unwrap();
        let hooks_keyring = Arc::new(keyring);
        let id = WebhookId::new();
        let secret = sign::generate();
        let s = hooks_keyring
            .wrap(FileId(id.0), &DataKey::from_bytes(*secret))
            .unwrap();
        let back = unseal(&hooks_keyring, id, &s.wrapped_key, Some(&s.key_id)).unwrap();
        assert_eq!(back.as_slice(), &secret[..]);
        assert!(
            unseal(
                &hooks_keyring,
                WebhookId::new(),
                &s.wrapped_key,
                Some(&s.key_id)
            )
            .is_none()
        );
    }
}
