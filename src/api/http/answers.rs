//! Full Discover answers as JSON, kept per service while their encoded answer is the
//! registry cache's current one: HTTP watchers of a service share one JSON encoding per
//! revision, as gRPC watchers share the encoded bytes. Bounded: past
//! [`MAX_KEPT_BYTES`], the answers kept are let go and kept anew as they are asked for.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

use super::json;
use crate::discovery::answer::Encoded;

/// How many bytes of JSON answers are kept at most.
pub const MAX_KEPT_BYTES: usize = 64 * 1024 * 1024;

/// One service's JSON answer and the encoded answer it was written from.
struct Kept {
    encoded: Encoded,
    json: Bytes,
}

#[derive(Default)]
pub struct JsonAnswers {
    kept: Mutex<KeptAnswers>,
}

#[derive(Default)]
struct KeptAnswers {
    by_service: HashMap<(String, String), Kept>,
    /// The JSON bytes held, over every service.
    bytes: usize,
}

impl JsonAnswers {
    /// The JSON of `encoded`, the full answer for `namespace/name`: the one kept when it
    /// was written from this same answer, else written now (and kept).
    pub fn json(&self, namespace: &str, name: &str, encoded: &Encoded) -> Bytes {
        let key = (namespace.to_owned(), name.to_owned());
        if let Some(kept) = self.kept.lock().expect("answers lock").by_service.get(&key)
            && kept.encoded.same(encoded)
        {
            return kept.json.clone();
        }
        let written = Bytes::from(json::encode_bytes(
            json::DISCOVER_RESPONSE,
            &encoded.to_bytes(),
        ));
        let mut kept = self.kept.lock().expect("answers lock");
        if kept.bytes + written.len() > MAX_KEPT_BYTES {
            kept.by_service.clear();
            kept.bytes = 0;
        }
        kept.bytes += written.len();
        let replaced = kept.by_service.insert(
            key,
            Kept {
                encoded: encoded.clone(),
                json: written.clone(),
            },
        );
        if let Some(replaced) = replaced {
            kept.bytes -= replaced.json.len();
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code::Code;
    use crate::discovery::answer;
    use crate::proto;
    use crate::proto::discover_response::DiscoverResponseType;

    fn encoded(revision: &str) -> Encoded {
        answer::plain(
            Code::ExecuteSuccess,
            DiscoverResponseType::Instance,
            Some(proto::Service {
                name: Some("svc".to_owned()),
                namespace: Some("ns".to_owned()),
                revision: Some(revision.to_owned()),
                ..Default::default()
            }),
        )
    }

    #[test]
    fn an_answer_is_written_once_per_encoded_answer() {
        let answers = JsonAnswers::default();
        let first = encoded("r1");
        let written = answers.json("ns", "svc", &first);
        let again = answers.json("ns", "svc", &first.clone());
        // The same bytes, not a second writing.
        assert_eq!(written.as_ptr(), again.as_ptr());
        let value: serde_json::Value = serde_json::from_slice(&written).unwrap();
        assert_eq!(value["service"]["revision"], "r1");

        // A new revision (a new encoded answer, even with equal bytes) is written anew.
        let second = encoded("r2");
        let newer = answers.json("ns", "svc", &second);
        let value: serde_json::Value = serde_json::from_slice(&newer).unwrap();
        assert_eq!(value["service"]["revision"], "r2");
        let equal_bytes = encoded("r2");
        assert_ne!(
            answers.json("ns", "svc", &equal_bytes).as_ptr(),
            newer.as_ptr()
        );
        let kept = answers.kept.lock().unwrap();
        assert_eq!(kept.by_service.len(), 1);
        assert_eq!(kept.bytes, newer.len());
    }
}
