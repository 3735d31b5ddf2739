//! Bad input from outside: requests over the transports' size limits, every limited
//! instance field at and one past its limit, and metadata full of SQL, quotes and NULs,
//! on both stores (MySQL when `BATCHREG_TEST_MYSQL_URL` is set). What the server accepts
//! is read back identical through Discover and in the store's rows.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use batchreg::naming::validate::{
    MAX_HOST_LEN, MAX_ID_LEN, MAX_LOCATION_LEN, MAX_LOGIC_SET_LEN, MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY_LEN, MAX_METADATA_VALUE_LEN, MAX_NAMESPACE_LEN, MAX_PORT, MAX_PROTOCOL_LEN,
    MAX_SERVICE_LEN, MAX_VERSION_LEN, MAX_VPC_ID_LEN, MAX_WEIGHT,
};
use batchreg::proto::{self, Instance};
use common::discover::{DiscoverRequestType, discover, request};
use common::http::Api;
use common::mysql::{fresh_database, with_connection};
use common::{TestServer, code, instance};
use tokio_stream::StreamExt;

const SUCCESS: u32 = 200_000;
const EXISTED: u32 = 400_201;
const BAD_REQUEST: u32 = 400_000;

#[tokio::test]
async fn requests_over_the_message_limits_are_refused_clearly() {
    let t = TestServer::start(|_| {}).await;
    let limit = batchreg::config::Config::default().server.grpc_max_message;
    assert_eq!(limit, 4 * 1024 * 1024, "the documented default");
    let mut client = t.client().await;

    // gRPC: a message over the limit is refused before it is decoded, naming the limit.
    let mut huge = instance("big", "svc", "10.0.0.1", 1);
    huge.host = Some("h".repeat(limit + 1));
    let refused = client.register_instance(huge.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
    assert!(
        refused.message().contains(&limit.to_string()),
        "{}",
        refused.message()
    );
    // Just under it, the message is read and the field's own limit answers.
    huge.host = Some("h".repeat(limit - 1024));
    let read = client.register_instance(huge).await.unwrap().into_inner();
    assert_eq!(code(&read), 400_131, "{:?}", read.info);

    // A Discover stream: the oversized message ends the stream with the same refusal.
    let mut oversized = request(DiscoverRequestType::Instance, "big", "svc", "");
    oversized.service.as_mut().unwrap().name = Some("s".repeat(limit + 1));
    let mut answers = client
        .discover(tokio_stream::iter([oversized]))
        .await
        .expect("the stream opens")
        .into_inner();
    let ended = answers.next().await.expect("an end").unwrap_err();
    assert_eq!(ended.code(), tonic::Code::OutOfRange, "{ended:?}");
    assert!(ended.message().contains(&limit.to_string()), "{ended:?}");

    // HTTP: a body over server.http_max_body is answered 413 with 400000, unread.
    let max_body = batchreg::config::Config::default().server.http_max_body;
    let body = format!("{{\"host\":\"{}\"}}", "h".repeat(max_body));
    let over = Api::new(&t).send("RegisterInstance", body, &[]).await;
    assert_eq!(
        (over.status, over.code()),
        (413, BAD_REQUEST),
        "{}",
        over.text
    );
    assert!(
        over.info().contains(&max_body.to_string()) && over.info().contains("http_max_body"),
        "{}",
        over.info()
    );
    assert_eq!(t.count("instance"), 0, "nothing written");
    t.server.shutdown().await.unwrap();
}

/// One limited field: how to set it to a length (or a value), its limit, and the code of
/// one past it (`None`: nothing past it to refuse).
struct Limited {
    field: &'static str,
    set: fn(&mut Instance, usize),
    limit: usize,
    past: Option<u32>,
}

fn text(n: usize, c: char) -> Option<String> {
    Some(c.to_string().repeat(n))
}

fn location(instance: &mut Instance) -> &mut proto::Location {
    instance.location.get_or_insert_default()
}

/// Every limit of src/naming/validate.rs, with the code of the field's own refusal.
const LIMITED: &[Limited] = &[
    Limited {
        field: "namespace",
        set: |i, n| i.namespace = text(n, 'n'),
        limit: MAX_NAMESPACE_LEN,
        past: Some(400_110),
    },
    Limited {
        field: "service",
        set: |i, n| i.service = text(n, 's'),
        limit: MAX_SERVICE_LEN,
        past: Some(400_120),
    },
    Limited {
        field: "id",
        set: |i, n| i.id = text(n, 'i'),
        limit: MAX_ID_LEN,
        past: Some(400_130),
    },
    Limited {
        field: "host",
        set: |i, n| i.host = text(n, 'h'),
        limit: MAX_HOST_LEN,
        past: Some(400_131),
    },
    Limited {
        field: "port",
        set: |i, n| i.port = Some(n as u32),
        limit: MAX_PORT as usize,
        past: Some(400_132),
    },
    Limited {
        field: "protocol",
        set: |i, n| i.protocol = text(n, 'p'),
        limit: MAX_PROTOCOL_LEN,
        past: Some(400_136),
    },
    Limited {
        field: "version",
        set: |i, n| i.version = text(n, 'v'),
        limit: MAX_VERSION_LEN,
        past: Some(400_137),
    },
    Limited {
        field: "logic_set",
        set: |i, n| i.logic_set = text(n, 'l'),
        limit: MAX_LOGIC_SET_LEN,
        past: Some(400_138),
    },
    Limited {
        field: "vpc_id",
        set: |i, n| i.vpc_id = text(n, 'c'),
        limit: MAX_VPC_ID_LEN,
        past: Some(400_103),
    },
    Limited {
        field: "location.region",
        set: |i, n| location(i).region = text(n, 'r'),
        limit: MAX_LOCATION_LEN,
        past: Some(400_103),
    },
    Limited {
        field: "location.zone",
        set: |i, n| location(i).zone = text(n, 'z'),
        limit: MAX_LOCATION_LEN,
        past: Some(400_103),
    },
    Limited {
        field: "location.campus",
        set: |i, n| location(i).campus = text(n, 'a'),
        limit: MAX_LOCATION_LEN,
        past: Some(400_103),
    },
    Limited {
        field: "weight",
        set: |i, n| i.weight = Some(n as u32),
        limit: MAX_WEIGHT as usize,
        past: Some(400_103),
    },
    Limited {
        field: "priority",
        set: |i, n| i.priority = Some(n as u32),
        limit: u32::MAX as usize,
        past: None,
    },
    Limited {
        field: "metadata entries",
        set: |i, n| {
            i.metadata = (0..n)
                .map(|k| (format!("key{k:02}"), k.to_string()))
                .collect()
        },
        limit: MAX_METADATA_ENTRIES,
        past: Some(400_150),
    },
    Limited {
        field: "metadata key",
        set: |i, n| i.metadata = HashMap::from([("k".repeat(n), "v".to_owned())]),
        limit: MAX_METADATA_KEY_LEN,
        past: Some(400_150),
    },
    Limited {
        field: "metadata value",
        set: |i, n| i.metadata = HashMap::from([("k".to_owned(), "v".repeat(n))]),
        limit: MAX_METADATA_VALUE_LEN,
        past: Some(400_150),
    },
];

/// Every limited field at its limit round-trips; one past it is refused with its code
/// and nothing is written. A heartbeat ttl past 60 s is not refused: it is stored as 5.
async fn every_limited_field_round_trips_at_its_limit_and_is_refused_past_it(
    t: TestServer,
    db: Db,
) {
    let mut client = t.client().await;
    for (n, case) in LIMITED.iter().enumerate() {
        let mut at = instance("limits", "svc", "10.0.0.1", 1000 + n as u32);
        at.location = Some(proto::Location::default());
        (case.set)(&mut at, case.limit);
        let answer = client
            .register_instance(at.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            code(&answer),
            SUCCESS,
            "{} at its limit: {:?}",
            case.field,
            answer.info
        );
        let id = answer.instance.unwrap().id.unwrap();
        read_back_identical(&t, &db, &id, &at, case.field).await;

        let Some(refusal) = case.past else { continue };
        let mut past = at.clone();
        past.port = Some(2000 + n as u32);
        (case.set)(&mut past, case.limit + 1);
        let answer = client.register_instance(past).await.unwrap().into_inner();
        assert_eq!(
            code(&answer),
            refusal,
            "{} past its limit: {:?}",
            case.field,
            answer.info
        );
        assert!(
            answer
                .info
                .as_deref()
                .unwrap_or("")
                .contains(&case.limit.to_string()),
            "{}: the refusal names the limit: {:?}",
            case.field,
            answer.info
        );
    }
    assert_eq!(
        db.live_instances(),
        LIMITED.len() as i64,
        "nothing past a limit written"
    );

    let mut ttl = instance("limits", "svc", "10.0.0.2", 1);
    for (sent, stored) in [(60, 60), (61, 5)] {
        ttl.health_check.as_mut().unwrap().heartbeat =
            Some(proto::HeartbeatHealthCheck { ttl: Some(sent) });
        let answer = client
            .register_instance(ttl.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(code(&answer), SUCCESS);
        let id = answer.instance.unwrap().id.unwrap();
        assert_eq!(db.instance(&id).unwrap().ttl, Some(stored), "ttl {sent}");
    }
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn limited_fields_on_sqlite() {
    let (t, db) = sqlite_server().await;
    every_limited_field_round_trips_at_its_limit_and_is_refused_past_it(t, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limited_fields_on_mysql() {
    let Some((t, db)) = mysql_server("bad_input_limits").await else {
        return;
    };
    every_limited_field_round_trips_at_its_limit_and_is_refused_past_it(t, db).await;
}

/// Metadata and fields full of SQL, quotes, backslashes and NULs, keys that differ only
/// by case or a trailing space: stored and read back byte for byte, the tables intact.
/// Values are always bound parameters, never SQL text.
async fn hostile_text_is_stored_as_it_is_and_the_tables_stay_intact(t: TestServer, db: Db) {
    let mut client = t.client().await;
    let metadata: HashMap<String, String> = [
        ("sql", "'); DROP TABLE instance; --"),
        ("or", "\" OR 1=1 --"),
        ("backslashes", "C:\\path\\ \\' \\\" \\0 \\n \\\\"),
        ("quotes", "'\"`´’“”"),
        ("nul", "a\0b\0"),
        ("nul\0key", "\0"),
        ("k'); DELETE FROM instance_metadata; --", "x"),
        ("Key", "upper"),
        ("key", "lower"),
        ("key ", "trailing space"),
        ("%_", "%_% LIKE wildcards"),
        ("unicode ✓", "ключ 😀"),
        ("empty", ""),
        ("long", &"'".repeat(MAX_METADATA_VALUE_LEN)),
        (
            &*"\\".repeat(MAX_METADATA_KEY_LEN),
            "backslashes at the key's limit",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let mut computed = instance("hostile", "svc", "10.0.0.1'); DROP TABLE service; --", 80);
    computed.protocol = Some("'".to_owned());
    computed.version = Some("\\".to_owned());
    computed.logic_set = Some("\0".to_owned());
    computed.vpc_id = Some("\" OR \"\"=\"".to_owned());
    computed.location = Some(proto::Location {
        region: Some("'; --".to_owned()),
        zone: Some("\0\0".to_owned()),
        campus: Some("\\'".to_owned()),
    });
    computed.metadata = metadata.clone();
    let mut given = computed.clone();
    given.id = Some("id'); DROP TABLE health_check; --\0".to_owned());
    given.host = Some("10.0.0.2".to_owned());

    for sent in [&computed, &given] {
        let answer = client
            .register_instance(sent.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(code(&answer), SUCCESS, "{:?}", answer.info);
        let id = answer.instance.unwrap().id.unwrap();
        read_back_identical(&t, &db, &id, sent, "hostile text").await;
        // Unchanged content is recognised as unchanged: the stored bytes are the sent ones.
        let again = client
            .register_instance(sent.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(code(&again), EXISTED, "{:?}", again.info);
    }
    assert_eq!(db.live_instances(), 2);
    let entries = metadata.len() as i64;
    assert_eq!(
        db.count("instance_metadata"),
        2 * entries,
        "every table intact"
    );
    assert_eq!(db.count("health_check"), 2);
    assert_eq!(db.count("service"), 1);

    let gone = client
        .deregister_instance(given.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&gone), SUCCESS, "{:?}", gone.info);
    assert_eq!(db.live_instances(), 1);
    assert_eq!(
        db.count("instance_metadata"),
        entries,
        "only its metadata deleted"
    );
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn hostile_text_on_sqlite() {
    let (t, db) = sqlite_server().await;
    hostile_text_is_stored_as_it_is_and_the_tables_stay_intact(t, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_on_mysql() {
    let Some((t, db)) = mysql_server("bad_input_hostile").await else {
        return;
    };
    hostile_text_is_stored_as_it_is_and_the_tables_stay_intact(t, db).await;
}

async fn sqlite_server() -> (TestServer, Db) {
    let t = TestServer::start(|_| {}).await;
    let db = Db::Sqlite(t.db_path.clone());
    (t, db)
}

/// A server on a fresh MySQL database, or `None` (said) without MySQL.
async fn mysql_server(suffix: &str) -> Option<(TestServer, Db)> {
    let url = fresh_database(suffix)?;
    let store = url.clone();
    Some((
        TestServer::start(|c| c.store.url = store).await,
        Db::Mysql(url),
    ))
}

/// The fields a Discover answer and the store rows show of what was sent.
#[derive(Debug, Clone, PartialEq)]
struct Shown {
    namespace: String,
    service: String,
    host: String,
    port: u32,
    protocol: String,
    version: String,
    priority: u32,
    weight: u32,
    logic_set: String,
    vpc_id: String,
    region: String,
    zone: String,
    campus: String,
    ttl: Option<u32>,
}

impl Shown {
    fn of(instance: &Instance) -> Shown {
        let text = |value: &Option<String>| value.clone().unwrap_or_default();
        let location = instance.location.clone().unwrap_or_default();
        Shown {
            namespace: text(&instance.namespace),
            service: text(&instance.service),
            host: text(&instance.host),
            port: instance.port.unwrap_or(0),
            protocol: text(&instance.protocol),
            version: text(&instance.version),
            priority: instance.priority.unwrap_or(0),
            weight: instance.weight.unwrap_or(100),
            logic_set: text(&instance.logic_set),
            vpc_id: text(&instance.vpc_id),
            region: text(&location.region),
            zone: text(&location.zone),
            campus: text(&location.campus),
            ttl: instance
                .health_check
                .as_ref()
                .and_then(|hc| hc.heartbeat.as_ref())
                .and_then(|hb| hb.ttl),
        }
    }

    fn sorted(metadata: &HashMap<String, String>) -> Vec<(String, String)> {
        let mut sorted: Vec<_> = metadata.clone().into_iter().collect();
        sorted.sort();
        sorted
    }
}

/// The instance `id`, registered as `sent`, read back through Discover and from the store.
async fn read_back_identical(t: &TestServer, db: &Db, id: &str, sent: &Instance, what: &str) {
    let expected = Shown::of(sent);
    let mut client = t.client().await;
    let answer = discover(
        &mut client,
        request(
            DiscoverRequestType::Instance,
            &expected.namespace,
            &expected.service,
            "",
        ),
    )
    .await;
    assert_eq!(answer.code, Some(SUCCESS), "{what}: {:?}", answer.info);
    let listed = answer
        .instances
        .iter()
        .find(|i| i.id.as_deref() == Some(id))
        .unwrap_or_else(|| panic!("{what}: {id:?} listed"));
    assert_eq!(Shown::of(listed), expected, "{what}: through Discover");
    assert_eq!(
        listed.metadata, sent.metadata,
        "{what}: metadata through Discover"
    );
    assert_eq!(
        db.instance(id).as_ref(),
        Some(&expected),
        "{what}: in the store"
    );
    assert_eq!(
        db.metadata(id),
        Shown::sorted(&sent.metadata),
        "{what}: metadata rows"
    );
    // Asked again with the revision just answered: current.
    let revision = answer.service.unwrap().revision.unwrap();
    let again = request(
        DiscoverRequestType::Instance,
        &expected.namespace,
        &expected.service,
        &revision,
    );
    assert_eq!(
        discover(&mut client, again).await.code,
        Some(200_001),
        "{what}"
    );
}

/// The server's store, read directly: the SQLite file or the MySQL database. The same
/// SQL serves both.
enum Db {
    Sqlite(PathBuf),
    Mysql(String),
}

/// A live instance's columns (with its service's names), in [`Shown`]'s order but ttl.
const INSTANCE_SQL: &str = "SELECT s.namespace, s.name, i.host, i.port, i.protocol, i.version,
        i.priority, i.weight, i.logic_set, i.vpc_id, i.cmdb_region, i.cmdb_zone
    FROM instance i JOIN service s ON s.id = i.service_id WHERE i.id = ? AND i.flag = 0";
const CAMPUS_TTL_SQL: &str = "SELECT i.cmdb_idc, h.ttl FROM instance i
    LEFT JOIN health_check h ON h.id = i.id WHERE i.id = ?";
const METADATA_SQL: &str = "SELECT mkey, mvalue FROM instance_metadata WHERE id = ?";

type InstanceColumns = (
    String,
    String,
    String,
    u32,
    String,
    String,
    u32,
    u32,
    String,
    String,
    String,
    String,
);

impl Db {
    fn instance(&self, id: &str) -> Option<Shown> {
        let (columns, (campus, ttl)): (InstanceColumns, (String, Option<u32>)) = match self {
            Db::Sqlite(path) => {
                let db = rusqlite::Connection::open(path).unwrap();
                let columns = db
                    .query_row(INSTANCE_SQL, [id], |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                            r.get(6)?,
                            r.get(7)?,
                            r.get(8)?,
                            r.get(9)?,
                            r.get(10)?,
                            r.get(11)?,
                        ))
                    })
                    .ok()?;
                let rest = db
                    .query_row(CAMPUS_TTL_SQL, [id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .unwrap();
                (columns, rest)
            }
            Db::Mysql(url) => {
                let id = id.to_owned();
                with_connection(url, async move |conn| {
                    use mysql_async::prelude::Queryable;
                    let columns: InstanceColumns =
                        conn.exec_first(INSTANCE_SQL, (&id,)).await.unwrap()?;
                    let rest = conn
                        .exec_first(CAMPUS_TTL_SQL, (&id,))
                        .await
                        .unwrap()
                        .unwrap();
                    Some((columns, rest))
                })?
            }
        };
        let (
            namespace,
            service,
            host,
            port,
            protocol,
            version,
            priority,
            weight,
            logic_set,
            vpc_id,
            region,
            zone,
        ) = columns;
        Some(Shown {
            namespace,
            service,
            host,
            port,
            protocol,
            version,
            priority,
            weight,
            logic_set,
            vpc_id,
            region,
            zone,
            campus,
            ttl,
        })
    }

    /// The instance's metadata rows, sorted by key byte for byte.
    fn metadata(&self, id: &str) -> Vec<(String, String)> {
        let mut rows: Vec<(String, String)> = match self {
            Db::Sqlite(path) => {
                let db = rusqlite::Connection::open(path).unwrap();
                let mut statement = db.prepare(METADATA_SQL).unwrap();
                statement
                    .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap()
            }
            Db::Mysql(url) => {
                let id = id.to_owned();
                with_connection(url, async move |conn| {
                    use mysql_async::prelude::Queryable;
                    conn.exec(METADATA_SQL, (id,)).await.unwrap()
                })
            }
        };
        rows.sort();
        rows
    }

    fn count(&self, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        match self {
            Db::Sqlite(path) => rusqlite::Connection::open(path)
                .unwrap()
                .query_row(&sql, [], |r| r.get(0))
                .unwrap(),
            Db::Mysql(url) => common::mysql::scalar(url, &sql),
        }
    }

    fn live_instances(&self) -> i64 {
        self.count("instance WHERE flag = 0")
    }
}
