//! Verify: after a storm, checks through Discover that the server lists every
//! instance of the fleet as it was registered. One cold request per service of the
//! fleet's grid, one at a time, so only one listing and the ids of its service's
//! instances are held at once, however large the fleet.

use clap::Args;
use tokio::time::Instant;

use crate::fleet::Fleet;
use crate::options::{ConnectionOptions, FleetOptions};
use crate::report::{EXECUTE_SUCCESS, NOT_FOUND_RESOURCE, Outcome};
use crate::scenario::discover_stream::{DiscoverError, DiscoverStream, instances_request};
use crate::scenario::{SetupError, connect};
use crate::verification::Verification;

/// Options of the `verify` scenario.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub connection: ConnectionOptions,

    #[command(flatten)]
    pub fleet: FleetOptions,

    /// Print the result as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A check that could not be made; the run exits with status 2.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("no listing of {namespace}/{service}")]
    Discover {
        namespace: String,
        service: String,
        #[source]
        source: DiscoverError,
    },
    #[error("{namespace}/{service} was answered {code} instead of a listing")]
    Refused {
        namespace: String,
        service: String,
        /// The answer's outcome label.
        code: String,
    },
}

/// Asks for the listing of each service of the fleet and compares it with the
/// fleet. Services take the connections (and targets) in turn, each connection
/// keeping one stream.
pub async fn run(args: VerifyArgs) -> Result<Verification, VerifyError> {
    let started = Instant::now();
    let connection = &args.connection;
    let (pool, headers) = connect(connection, false).await?;
    let fleet = Fleet::new(&args.fleet);
    let mut streams: Vec<DiscoverStream> = (0..pool.connection_count() as u64)
        .map(|index| {
            DiscoverStream::new(
                pool.grpc(index),
                headers.clone(),
                format!("verify-{index}"),
                connection.timeout,
            )
        })
        .collect();
    let stream_count = streams.len() as u64;
    let mut verification = Verification::new(connection.targets.clone());
    for cell in 0..fleet.grid().cells() {
        let (namespace, service) = fleet.grid().cell(cell);
        let stream = &mut streams[(cell % stream_count) as usize];
        let answer = stream
            .ask(instances_request(namespace, service, None))
            .await
            .map_err(|source| VerifyError::Discover {
                namespace: namespace.to_owned(),
                service: service.to_owned(),
                source,
            })?;
        let listing = match answer.code {
            Some(EXECUTE_SUCCESS) => answer.instances.as_slice(),
            Some(NOT_FOUND_RESOURCE) => &[],
            code => {
                return Err(VerifyError::Refused {
                    namespace: namespace.to_owned(),
                    service: service.to_owned(),
                    code: Outcome::Answered(code).label(),
                });
            }
        };
        verification.check_service(&fleet, cell, listing);
    }
    verification.set_elapsed(started.elapsed());
    Ok(verification)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;
    use crate::scenario::fake_discover::{FakeDiscover, registered_fleet};
    use crate::scenario::parse_args;

    const FLEET: [&str; 8] = [
        "--count",
        "40",
        "--namespaces",
        "2",
        "--services",
        "3",
        "--seed",
        "7",
    ];

    fn args(address: &str) -> VerifyArgs {
        let words = [&["--target", address, "--connections", "2"], &FLEET[..]].concat();
        parse_args::<VerifyArgs>(words).unwrap()
    }

    /// What a server that registered the fleet lists, changed by `change`.
    fn listing(change: impl FnOnce(&mut Vec<proto::Instance>)) -> FakeDiscover {
        let fleet = Fleet::new(&args("unused:1").fleet);
        let mut instances = registered_fleet(&fleet);
        change(&mut instances);
        FakeDiscover::listing(instances)
    }

    #[test]
    fn verify_reads_the_fleet_of_a_storm() {
        let verify = parse_args::<VerifyArgs>(FLEET).unwrap();
        let storm = parse_args::<crate::scenario::storm::StormArgs>(FLEET).unwrap();
        let (verified, stormed) = (
            Fleet::new(&verify.fleet),
            crate::scenario::storm::fleet_of(&storm),
        );
        for index in 0..40 {
            assert_eq!(verified.instance(index), stormed.instance(index));
        }
    }

    #[tokio::test]
    async fn a_complete_listing_verifies() {
        let server = listing(|_| {}).start().await;
        let verification = run(args(&server.address)).await.unwrap();
        assert_eq!(verification.services, 6);
        assert_eq!((verification.expected, verification.listed), (40, 40));
        assert_eq!(
            (
                verification.missing,
                verification.mismatched,
                verification.extra
            ),
            (0, 0, 0)
        );
        assert!(verification.is_complete());
        // One cold request per service, on the same streams.
        let requests = server.requests();
        assert_eq!(requests.len(), 6);
        assert!(
            requests
                .iter()
                .all(|r| r.service.as_ref().unwrap().revision.is_none())
        );
    }

    #[tokio::test]
    async fn a_missing_instance_fails_and_is_named() {
        let server = listing(|instances| {
            instances.remove(17);
        })
        .start()
        .await;
        let verification = run(args(&server.address)).await.unwrap();
        assert_eq!((verification.listed, verification.missing), (39, 1));
        assert!(!verification.is_complete());
        let missing = &verification.missing_examples[0];
        let fleet = Fleet::new(&args("unused:1").fleet);
        assert_eq!(missing.index, Some(17));
        assert_eq!(missing.id, fleet.instance_id(17));
    }

    #[tokio::test]
    async fn a_different_metadata_value_fails_and_is_named() {
        let server = listing(|instances| {
            instances[23]
                .metadata
                .insert("k1".to_owned(), "changed".to_owned());
        })
        .start()
        .await;
        let verification = run(args(&server.address)).await.unwrap();
        assert_eq!((verification.listed, verification.mismatched), (40, 1));
        assert!(!verification.is_complete());
        let mismatch = &verification.mismatched_examples[0];
        assert_eq!(mismatch.instance.index, Some(23));
        assert_eq!(mismatch.differences.len(), 1);
        assert_eq!(mismatch.differences[0].field, "metadata.k1");
        assert_eq!(mismatch.differences[0].listed.as_deref(), Some("changed"));
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_setup_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let error = run(args(&address)).await.unwrap_err();
        assert!(
            matches!(error, VerifyError::Setup(SetupError::Connect(_))),
            "{error:?}"
        );
    }
}
