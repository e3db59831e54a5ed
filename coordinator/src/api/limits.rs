//! What bounds a caller before its request reaches a handler: the role and
//! revocation check that runs on a call's headers (the TLS connection's client
//! certificate) before its body is read or decoded, and how many long-lived
//! streams one caller may hold
//! open at once. The number of concurrent HTTP/2 streams per connection is set on
//! the servers (`coordinator/src/lib.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ferry_common::pki::{CertificateFacts, Role, peer_certificate};
use futures::StreamExt;
use tonic::Status;

use super::ResponseStream;
use crate::node::Node;
use crate::state::{PresentedCertificate, Revocations};

/// Most concurrent HTTP/2 streams (calls) one connection to the client and
/// worker server may have open; more wait in the caller's HTTP/2 client until one
/// ends.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// The same for the peer server, where a follower forwards the calls of all of
/// its clients over one connection.
pub const MAX_PEER_STREAMS_PER_CONNECTION: u32 = 1024;
/// Most long-lived answer streams (`ferry logs`, artifact downloads) one client
/// certificate may hold open at once, over all its connections to this member.
pub const MAX_CLIENT_STREAMS_PER_CALLER: usize = 32;
// A worker holds one assignment stream at most: a new one replaces the old one
// (`Node::attach_worker`), whose stream then ends.

/// A tonic interceptor that refuses a call unless the client certificate of its
/// TLS connection carries `role` (`PermissionDenied`, `Unauthenticated` without a
/// Ferry identity) and is not on the replicated deny list as this member has
/// applied it (`Unauthenticated`, saying it was revoked). It runs on every call,
/// so a certificate revoked while its connection stays open is refused from its
/// next call on. It sees only the call's headers and connection: the body is
/// neither read nor decoded for a refused call.
pub fn role_gate<Revoked>(
    role: Role,
    revoked: Revoked,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, Status> + Clone
where
    Revoked: Fn(&CertificateFacts) -> Option<String> + Clone,
{
    move |request: tonic::Request<()>| {
        let facts = peer_certificate(&request)?;
        check_role(&facts, role)?;
        if let Some(reason) = revoked(&facts) {
            tracing::warn!(
                caller = %facts.identity,
                serial = %facts.serial,
                "refused a call: its certificate is revoked"
            );
            return Err(Status::unauthenticated(format!(
                "the client certificate was revoked: {reason}"
            )));
        }
        Ok(request)
    }
}

/// The check [`role_gate`] makes against the deny list as `node` has applied it.
pub fn deny_list_of(node: Arc<Node>) -> impl Fn(&CertificateFacts) -> Option<String> + Clone {
    move |facts: &CertificateFacts| node.read(|state| revoked(&state.revocations, facts))
}

fn check_role(facts: &CertificateFacts, role: Role) -> Result<(), Status> {
    if facts.identity.role == role {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "this service accepts {role} certificates only; the caller presented a {other} \
         certificate for \"{name}\"",
        other = facts.identity.role,
        name = facts.identity.name
    )))
}

/// Why the certificate described by `facts` is refused by `list`, if it is.
pub fn revoked(list: &Revocations, facts: &CertificateFacts) -> Option<String> {
    if list.is_empty() {
        return None;
    }
    list.refusal(PresentedCertificate {
        serial: &facts.serial,
        name: &facts.identity.name,
        issued_ms: facts.issued_ms,
    })
}

/// `stream`, cut short with `Unauthenticated` (saying the certificate was
/// revoked) as soon as this member has applied a revocation of the certificate
/// described by `facts`. The per-call check refuses a revoked certificate's next
/// call; this ends the long-lived calls it already has open (a worker's
/// assignment stream, `ferry logs --follow`, downloads). The deny list is looked
/// at again each time this member applies an entry, not on a timer.
pub fn until_revoked<T: Send + 'static>(
    stream: ResponseStream<T>,
    node: Arc<Node>,
    facts: Arc<CertificateFacts>,
) -> ResponseStream<T> {
    let mut applied = node.subscribe_state();
    let revocation = Box::pin(async move {
        loop {
            if let Some(reason) = node.read(|state| revoked(&state.revocations, &facts)) {
                tracing::warn!(
                    caller = %facts.identity,
                    serial = %facts.serial,
                    "ended an open stream: its certificate was revoked"
                );
                return reason;
            }
            if applied.changed().await.is_err() {
                // The member is stopping; its servers end the stream.
                return std::future::pending().await;
            }
        }
    });
    Box::pin(cut_by(stream, revocation))
}

/// `stream` until `reason` resolves, then one `Unauthenticated` error and the end.
fn cut_by<T: Send + 'static>(
    stream: ResponseStream<T>,
    reason: std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>>,
) -> impl futures::Stream<Item = Result<T, Status>> + Send {
    futures::stream::unfold(Some((stream, reason)), |open| async move {
        let (mut stream, mut reason) = open?;
        tokio::select! {
            biased;
            reason = &mut reason => Some((
                Err(Status::unauthenticated(format!(
                    "the client certificate was revoked: {reason}"
                ))),
                None,
            )),
            item = stream.next() => item.map(|item| (item, Some((stream, reason)))),
        }
    })
}

/// How many streams of one kind each caller holds open, up to a limit.
pub struct StreamSlots {
    what: &'static str,
    limit: usize,
    open: Mutex<HashMap<String, usize>>,
}

/// One caller's open stream; the slot is given back when it is dropped (with the
/// stream that holds it).
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
    caller: String,
}

impl StreamSlots {
    pub fn new(what: &'static str, limit: usize) -> Arc<StreamSlots> {
        Arc::new(StreamSlots {
            what,
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `caller`, or `ResourceExhausted` when it already holds `limit`.
    pub fn take(self: &Arc<Self>, caller: &str) -> Result<StreamSlot, Status> {
        let mut open = ferry_common::locks::lock(&self.open, "stream slots");
        let count = open.entry(caller.to_string()).or_default();
        if *count >= self.limit {
            return Err(Status::resource_exhausted(format!(
                "\"{caller}\" already has {count} {what} open on this coordinator; the limit \
                 is {limit} per caller: end one (or wait for one to end) and try again",
                what = self.what,
                limit = self.limit
            )));
        }
        *count += 1;
        Ok(StreamSlot {
            slots: self.clone(),
            caller: caller.to_string(),
        })
    }

    #[cfg(test)]
    fn held_by(&self, caller: &str) -> usize {
        ferry_common::locks::lock(&self.open, "stream slots")
            .get(caller)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = ferry_common::locks::lock(&self.slots.open, "stream slots");
        if let Some(count) = open.get_mut(&self.caller) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.caller);
            }
        }
    }
}

/// `stream`, holding `slot` until it ends or is dropped.
pub fn holding<T: Send + 'static>(
    stream: ResponseStream<T>,
    slot: StreamSlot,
) -> ResponseStream<T> {
    Box::pin(stream.map(move |item| {
        let _held = &slot;
        item
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_gets_at_most_its_limit_and_slots_come_back() {
        let slots = StreamSlots::new("log streams", 2);
        let first = slots.take("alice").unwrap();
        let _second = slots.take("alice").unwrap();
        let refused = slots.take("alice").err().unwrap();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("limit is 2"),
            "{}",
            refused.message()
        );
        // Another caller is not affected.
        let _bob = slots.take("bob").unwrap();
        drop(first);
        assert_eq!(slots.held_by("alice"), 1);
        let _again = slots.take("alice").unwrap();
    }

    #[tokio::test]
    async fn a_stream_gives_its_slot_back_when_dropped() {
        let slots = StreamSlots::new("log streams", 1);
        let slot = slots.take("alice").unwrap();
        let stream: ResponseStream<u32> = Box::pin(futures::stream::iter([Ok(1), Ok(2)]));
        let mut stream = holding(stream, slot);
        assert!(slots.take("alice").is_err());
        assert_eq!(stream.next().await.map(|r| r.ok()), Some(Some(1)));
        drop(stream);
        assert_eq!(slots.held_by("alice"), 0);
    }

    #[tokio::test]
    async fn a_cut_stream_ends_with_the_revocation_and_no_more_items() {
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<u32, Status>>(4);
        let (revoke, revoked) = tokio::sync::oneshot::channel::<String>();
        let stream: ResponseStream<u32> =
            Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver));
        let reason = Box::pin(async move {
            match revoked.await {
                Ok(reason) => reason,
                Err(_) => std::future::pending().await,
            }
        });
        let mut stream = Box::pin(cut_by(stream, reason));
        sender.send(Ok(1)).await.unwrap();
        assert_eq!(stream.next().await.map(|r| r.ok()), Some(Some(1)));
        sender.send(Ok(2)).await.unwrap();
        revoke
            .send("serial ab12 revoked by alice".to_string())
            .unwrap();
        let error = stream.next().await.unwrap().unwrap_err();
        assert_eq!(error.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            error.message(),
            "the client certificate was revoked: serial ab12 revoked by alice"
        );
        // The item still queued is not sent after the refusal.
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_stream_that_ends_by_itself_is_not_cut() {
        let stream: ResponseStream<u32> = Box::pin(futures::stream::iter([Ok(1)]));
        let never = Box::pin(std::future::pending::<String>());
        let items: Vec<_> = cut_by(stream, never).collect().await;
        assert_eq!(items.len(), 1);
    }

    #[test]
    fn the_role_gate_refuses_a_call_without_a_certificate() {
        let mut gate = role_gate(Role::Coordinator, |_: &CertificateFacts| None);
        let refused = gate(tonic::Request::new(())).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn a_certificate_on_the_deny_list_is_revoked_by_serial_or_name() {
        let facts = CertificateFacts {
            identity: ferry_common::pki::Identity {
                role: Role::Worker,
                name: "w1".to_string(),
            },
            serial: "ab12".to_string(),
            issued_ms: 5_000,
            not_after_secs: 100,
        };
        let mut list = Revocations::default();
        assert_eq!(revoked(&list, &facts), None);
        let record = crate::state::Revoked {
            by: "alice".to_string(),
            at_ms: 6_000,
        };
        list.names.insert("w1".to_string(), record.clone());
        assert!(revoked(&list, &facts).unwrap().contains("\"w1\""));
        list.names.clear();
        list.serials.insert("ab12".to_string(), record);
        assert!(revoked(&list, &facts).unwrap().contains("serial ab12"));
    }
}
