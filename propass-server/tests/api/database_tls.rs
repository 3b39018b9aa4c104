//! The server's link to PostgreSQL honours the URL's `sslmode` and
//! `sslrootcert`. Needs a PostgreSQL that offers TLS and the CA that signed
//! its certificate in `PROPASS_TEST_PG_CA`: `cargo xtask test` provisions both.

use diesel::sql_types::Bool;
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use propass_test_support::TempDir;
use serde_json::json;

use crate::helpers::*;

#[derive(QueryableByName)]
struct Ssl {
    #[diesel(sql_type = Bool)]
    ssl: bool,
}

fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

#[tokio::test]
async fn the_database_link_honours_sslmode_and_its_ca() {
    let Ok(ca) = std::env::var("PROPASS_TEST_PG_CA") else {
        eprintln!("skipped: PROPASS_TEST_PG_CA is not set (run `cargo xtask test`, which provisions a TLS-enabled PostgreSQL)");
        return;
    };
    // verify-full with the cluster's CA: TLS, checked, and everything works.
    let app = spawn_with(|c| {
        c.database_url = with_params(
            &c.database_url,
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        );
    })
    .await;
    assert_eq!(app.health_status().await, 200);
    let ssl: Ssl = diesel::sql_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .get_result(&mut app.state.pool.get().await.unwrap())
        .await
        .unwrap();
    assert!(ssl.ssl, "the pool's connections use TLS");
    let client = app.add_client("ACME", 5).await;
    let token = app.token("K1").await;
    let push = json!({"device_id": "K1", "queue": [seed_item(1, client, "04AB12CD")]});
    assert_eq!(app.push_ok(&token, &push).await[0]["status"], "synced");

    // A CA that did not sign the database's certificate: no connection.
    let dir = TempDir::new("propass-pg-tls").unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca2 = params
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap();
    std::fs::write(&other_ca, ca2.pem()).unwrap();
    let other = other_ca.display().to_string();
    let app = spawn_unreachable(|c| {
        c.database_url = with_params(
            &c.database_url,
            &format!("sslmode=verify-full&sslrootcert={other}"),
        );
        c.db_timeout = std::time::Duration::from_secs(2);
    })
    .await;
    assert_eq!(
        app.health_status().await,
        503,
        "an untrusted database is no database"
    );

    // A CA file that cannot be read: the server refuses to start.
    let mut config = propass_server::config::Config::new(
        with_params(
            &app.db_url,
            "sslmode=require&sslrootcert=/nonexistent/ca.pem",
        ),
        propass_server::config::Secret::new(SECRET),
    );
    config.bind = "127.0.0.1:0".parse().unwrap();
    let err = propass_server::startup::Application::build(config)
        .err()
        .expect("a database URL whose CA cannot be read refuses to start");
    assert!(err.to_string().contains("cannot read sslrootcert"), "{err}");
}
