//! The ids of acknowledged registrations (`--acked-out`): the instances the server
//! said it stored, which a test checks the store against after a fault.

use std::fs::File;
use std::io::{self, BufWriter, Write as _};
use std::path::PathBuf;
use std::sync::Mutex;

use crate::options::AckOptions;
use crate::report::{EXECUTE_SUCCESS, EXISTED_RESOURCE, Outcome};

/// The codes that say the instance is stored: written (or changed), or already there.
const ACKNOWLEDGING: &[u32] = &[EXECUTE_SUCCESS, EXISTED_RESOURCE];

/// How one registration ended, and the id of the instance its answer carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterAnswer {
    pub outcome: Outcome,
    pub instance_id: Option<String>,
}

impl RegisterAnswer {
    /// The id this answer acknowledges: the answer's instance id when its code says
    /// the instance is stored.
    fn acknowledged_id(&self) -> Option<&str> {
        match self.outcome {
            Outcome::Answered(Some(code)) if ACKNOWLEDGING.contains(&code) => {
                self.instance_id.as_deref().filter(|id| !id.is_empty())
            }
            _ => None,
        }
    }
}

/// `--acked-out` could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write --acked-out {}", path.display())]
pub struct AckFileError {
    path: PathBuf,
    #[source]
    source: io::Error,
}

/// Where acknowledged ids go: a file written as the answers arrive, or nowhere.
#[derive(Debug)]
pub struct AckLog {
    file: Option<Mutex<AckFile>>,
}

#[derive(Debug)]
struct AckFile {
    path: PathBuf,
    writer: BufWriter<File>,
    written: u64,
    /// The first write that failed; reported by [`AckLog::finish`].
    failed: Option<io::Error>,
}

impl AckLog {
    /// Creates (truncates) the file of `--acked-out`, if given.
    pub fn create(options: &AckOptions) -> Result<Self, AckFileError> {
        let Some(path) = &options.acked_out else {
            return Ok(AckLog { file: None });
        };
        let file = File::create(path).map_err(|source| AckFileError {
            path: path.clone(),
            source,
        })?;
        Ok(AckLog {
            file: Some(Mutex::new(AckFile {
                path: path.clone(),
                writer: BufWriter::new(file),
                written: 0,
                failed: None,
            })),
        })
    }

    /// Writes the id `answer` acknowledges, if any.
    pub fn record(&self, answer: &RegisterAnswer) {
        let (Some(file), Some(id)) = (&self.file, answer.acknowledged_id()) else {
            return;
        };
        let mut file = file.lock().expect("no writer panicked holding it");
        if file.failed.is_some() {
            return;
        }
        match writeln!(file.writer, "{id}") {
            Ok(()) => file.written += 1,
            Err(error) => file.failed = Some(error),
        }
    }

    /// Flushes the file; the count of ids written, `None` without a file.
    pub fn finish(&self) -> Result<Option<u64>, AckFileError> {
        let Some(file) = &self.file else {
            return Ok(None);
        };
        let mut file = file.lock().expect("no writer panicked holding it");
        let flushed = match file.failed.take() {
            Some(error) => Err(error),
            None => file.writer.flush(),
        };
        flushed.map_err(|source| AckFileError {
            path: file.path.clone(),
            source,
        })?;
        Ok(Some(file.written))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(outcome: Outcome, id: Option<&str>) -> RegisterAnswer {
        RegisterAnswer {
            outcome,
            instance_id: id.map(str::to_owned),
        }
    }

    fn temp_file(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("loadgen-acked-{}-{name}", std::process::id()))
    }

    #[test]
    fn only_stored_instances_with_an_id_are_acknowledged() {
        let stored = answer(Outcome::Answered(Some(EXECUTE_SUCCESS)), Some("a1"));
        assert_eq!(stored.acknowledged_id(), Some("a1"));
        let existed = answer(Outcome::Answered(Some(EXISTED_RESOURCE)), Some("b2"));
        assert_eq!(existed.acknowledged_id(), Some("b2"));
        for refused in [
            answer(Outcome::Answered(Some(500001)), Some("c3")),
            answer(Outcome::Answered(Some(429001)), Some("c3")),
            answer(Outcome::Answered(None), Some("c3")),
            answer(Outcome::Grpc(tonic::Code::Unavailable), None),
            answer(Outcome::Timeout, None),
            answer(Outcome::Answered(Some(EXECUTE_SUCCESS)), None),
            answer(Outcome::Answered(Some(EXECUTE_SUCCESS)), Some("")),
        ] {
            assert_eq!(refused.acknowledged_id(), None, "{refused:?}");
        }
    }

    #[test]
    fn acknowledged_ids_are_written_one_per_line() {
        let path = temp_file("lines");
        let log = AckLog::create(&AckOptions {
            acked_out: Some(path.clone()),
        })
        .unwrap();
        log.record(&answer(
            Outcome::Answered(Some(EXECUTE_SUCCESS)),
            Some("id-1"),
        ));
        log.record(&answer(Outcome::Answered(Some(500001)), Some("id-2")));
        log.record(&answer(Outcome::Grpc(tonic::Code::Cancelled), None));
        log.record(&answer(
            Outcome::Answered(Some(EXISTED_RESOURCE)),
            Some("id-3"),
        ));
        assert_eq!(log.finish().unwrap(), Some(2));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "id-1\nid-3\n");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn without_a_file_nothing_is_counted() {
        let log = AckLog::create(&AckOptions::default()).unwrap();
        log.record(&answer(
            Outcome::Answered(Some(EXECUTE_SUCCESS)),
            Some("id-1"),
        ));
        assert_eq!(log.finish().unwrap(), None);
    }

    #[test]
    fn a_file_that_cannot_be_created_is_refused_before_the_run() {
        let path = temp_file("missing-dir").join("acked.txt");
        let error = AckLog::create(&AckOptions {
            acked_out: Some(path),
        })
        .unwrap_err();
        assert!(
            error.to_string().starts_with("cannot write --acked-out "),
            "{error}"
        );
    }
}
