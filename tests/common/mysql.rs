#![allow(dead_code)]

//! MySQL for the tests: `BATCHREG_TEST_MYSQL_URL` names a database on a server the tests
//! may create databases on. Unset, the MySQL tests say they were skipped and pass, unless
//! `BATCHREG_TEST_REQUIRE_MYSQL` is set (as in CI), when they fail.

use mysql_async::prelude::Queryable;

pub const URL_VAR: &str = "BATCHREG_TEST_MYSQL_URL";

/// A fresh, empty database for one test: `<base>_<suffix>`, dropped and created anew.
/// `None` (after saying so) when no MySQL is configured.
pub fn fresh_database(suffix: &str) -> Option<String> {
    let Ok(base_url) = std::env::var(URL_VAR) else {
        if std::env::var_os("BATCHREG_TEST_REQUIRE_MYSQL").is_some() {
            panic!("{URL_VAR} is not set but BATCHREG_TEST_REQUIRE_MYSQL is: MySQL tests must run");
        }
        eprintln!("SKIPPED: {URL_VAR} is not set; MySQL test '{suffix}' did not run");
        return None;
    };
    let (server, base) = base_url.rsplit_once('/').expect("URL ends in /database");
    let base = base.split('?').next().unwrap();
    let name = format!("{base}_{suffix}");
    let url = format!("{server}/{name}");
    admin(
        &format!("{server}/{base}"),
        &[
            format!("DROP DATABASE IF EXISTS `{name}`"),
            format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"),
        ],
    );
    Some(url)
}

/// Runs `work` on one connection to `url`, on a thread and runtime of its own (callable
/// from sync and async tests alike).
pub fn with_connection<T: Send + 'static>(
    url: &str,
    work: impl AsyncFnOnce(&mut mysql_async::Conn) -> T + Send + 'static,
) -> T {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let pool = mysql_async::Pool::new(url.as_str());
            let mut conn = pool.get_conn().await.expect("MySQL answers");
            let result = work(&mut conn).await;
            drop(conn);
            pool.disconnect().await.unwrap();
            result
        })
    })
    .join()
    .unwrap()
}

/// Runs statements on their own connection.
pub fn admin(url: &str, statements: &[String]) {
    let statements = statements.to_vec();
    with_connection(url, async move |conn| {
        for statement in statements {
            conn.query_drop(statement).await.expect("admin statement");
        }
    });
}

/// Runs one query returning a single number.
pub fn scalar(url: &str, query: &str) -> i64 {
    let query = query.to_owned();
    with_connection(url, async move |conn| {
        let value: Option<i64> = conn.query_first(query).await.unwrap();
        value.unwrap()
    })
}

/// Ids of the server connections open on `url`'s database. Asked from another
/// database, so that the asking connection, or one of an earlier call the server has not
/// finished closing, is never among them.
pub fn connection_ids(url: &str) -> Vec<i64> {
    let (server, database) = url.rsplit_once('/').expect("URL ends in /database");
    let database = database.split('?').next().unwrap().to_owned();
    with_connection(&format!("{server}/information_schema"), async move |conn| {
        conn.exec(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ?",
            (database,),
        )
        .await
        .unwrap()
    })
}
