//! The gRPC service end to end: a real server on 127.0.0.1:0 with real TLS
//! certificates made here, and real tonic clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // test code: a panic is a failure report

mod common;

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use fugo::certs::DevCa;
use fugo::proto::fugo::v1::codes_client::CodesClient;
use fugo::proto::fugo::v1::{
    DeriveRequest, ItemError, RedeemRequest, ReidentifyRequest, SealRequest, derive_result,
    redeem_result, reidentify_result, seal_result,
};
use fugo::proto::google::rpc::Code as RpcCode;
use fugo::service::{self, Running};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const POLICY: &str = r#"
[[agency]]
id = "mhlw"
name = "MHLW"
certificates = ["mhlw"]
capabilities = ["derive"]
epoch = 1

[[agency]]
id = "city-shinjuku"
name = "Shinjuku"
certificates = ["city-shinjuku"]
capabilities = ["derive", "reidentify"]
epoch = 2
accepted_epochs = [1, 2]

[[agency]]
id = "moj"
name = "MOJ family registers"
certificates = ["moj"]
epoch = 1

[[affair]]
id = "health"
name = "health insurance benefits"
legal_basis = "table 2"

[[affair]]
id = "quick"
name = "short-lived tokens"
legal_basis = "test"

[[rule]]
requester = "mhlw"
affair = "health"
provider = "city-shinjuku"
items = ["local-tax", "resident-register"]
token_lifetime_seconds = 3600

[[rule]]
requester = "mhlw"
affair = "health"
provider = "moj"
items = ["family-register"]
token_lifetime_seconds = 3600

[[rule]]
requester = "mhlw"
affair = "quick"
provider = "city-shinjuku"
items = ["local-tax"]
token_lifetime_seconds = 1
"#;

struct Harness {
    dir: tempfile::TempDir,
    ca: DevCa,
    running: Option<Running>,
}

impl Harness {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (config, ca) = common::server_config(dir.path(), POLICY, [42; 32]);
        let running = service::start(config, &mut std::io::sink()).await.unwrap();
        Harness {
            dir,
            ca,
            running: Some(running),
        }
    }

    fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.toml")
    }

    async fn channel(&self, tls: ClientTlsConfig) -> Channel {
        Endpoint::from_shared(format!("https://{}", self.running().addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap()
    }

    fn tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.ca.cert_pem()))
            .domain_name("localhost")
    }

    /// A client whose certificate, from the server's CA, names `identity`.
    async fn client(&self, identity: &str) -> CodesClient<Channel> {
        let pem = self.ca.client(identity).unwrap();
        let tls = self.tls().identity(Identity::from_pem(pem.cert, pem.key));
        CodesClient::new(self.channel(tls).await)
    }

    async fn stop(mut self) {
        self.running.take().unwrap().stop().await.unwrap();
    }
}

fn numbers(count: u64, seed: u64) -> Vec<String> {
    (0..count)
        .map(|i| common::valid_number(seed.wrapping_add(i.wrapping_mul(0x9e37_79b9))))
        .collect()
}

async fn derive(client: &mut CodesClient<Channel>, numbers: &[String]) -> Vec<String> {
    let response = client
        .derive(DeriveRequest {
            numbers: numbers.to_vec(),
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .await
        .unwrap()
        .into_inner();
    response
        .results
        .into_iter()
        .map(|r| match r.result.unwrap() {
            derive_result::Result::Code(code) => code,
            derive_result::Result::Error(e) => panic!("derive failed: {e:?}"),
        })
        .collect()
}

fn seal_request(provider: &str, affair: &str, items: &[&str], codes: Vec<String>) -> SealRequest {
    SealRequest {
        provider: provider.to_owned(),
        affair: affair.to_owned(),
        items: items.iter().map(|s| (*s).to_owned()).collect(),
        non_disclosure_until: 0,
        codes,
        on_behalf_of: String::new(),
    }
}

async fn seal(client: &mut CodesClient<Channel>, request: SealRequest) -> Vec<Vec<u8>> {
    let response = client.seal(request).await.unwrap().into_inner();
    response
        .results
        .into_iter()
        .map(|r| match r.result.unwrap() {
            seal_result::Result::Sealed(sealed) => sealed.token,
            seal_result::Result::Error(e) => panic!("seal failed: {e:?}"),
        })
        .collect()
}

async fn redeem(
    client: &mut CodesClient<Channel>,
    tokens: Vec<Vec<u8>>,
) -> Vec<Result<String, ItemError>> {
    let response = client
        .redeem(RedeemRequest {
            epoch: 0,
            tokens,
            on_behalf_of: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    response
        .results
        .into_iter()
        .map(|r| match r.result.unwrap() {
            redeem_result::Result::Redeemed(redeemed) => Ok(redeemed.code),
            redeem_result::Result::Error(e) => Err(e),
        })
        .collect()
}

fn item_code(error: &ItemError) -> RpcCode {
    RpcCode::try_from(error.code).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derive_seal_redeem_gives_exactly_the_providers_codes() {
    let harness = Harness::start().await;
    let mut mhlw = harness.client("mhlw").await;
    let mut shinjuku = harness.client("city-shinjuku").await;
    let numbers = numbers(4000, 7);
    for chunk in numbers.chunks(1000) {
        let a = derive(&mut mhlw, chunk).await;
        let b = derive(&mut shinjuku, chunk).await;
        assert!(
            a.iter().zip(&b).all(|(x, y)| x != y),
            "A's and B's codes differ"
        );
        let tokens = seal(
            &mut mhlw,
            seal_request("city-shinjuku", "health", &["local-tax"], a),
        )
        .await;
        let redeemed: Vec<String> = redeem(&mut shinjuku, tokens)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(redeemed, b);
    }
    // Reidentify goes back to the numbers, for the agency allowed to.
    let codes = derive(&mut shinjuku, &numbers[..50]).await;
    let back = shinjuku
        .reidentify(ReidentifyRequest { codes })
        .await
        .unwrap()
        .into_inner();
    let back: Vec<String> = back
        .results
        .into_iter()
        .map(|r| match r.result.unwrap() {
            reidentify_result::Result::Number(n) => n,
            reidentify_result::Result::Error(e) => panic!("{e:?}"),
        })
        .collect();
    assert_eq!(back, numbers[..50]);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_answer_batch_by_batch_in_order() {
    let harness = Harness::start().await;
    let mut mhlw = harness.client("mhlw").await;
    let numbers = numbers(3000, 99);
    let requests: Vec<DeriveRequest> = numbers
        .chunks(1000)
        .map(|chunk| DeriveRequest {
            numbers: chunk.to_vec(),
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .collect();
    let mut responses = mhlw
        .derive_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut streamed = Vec::new();
    while let Some(response) = responses.message().await.unwrap() {
        for result in response.results {
            match result.result.unwrap() {
                derive_result::Result::Code(code) => streamed.push(code),
                derive_result::Result::Error(e) => panic!("{e:?}"),
            }
        }
    }
    assert_eq!(
        streamed,
        derive(&mut mhlw, &numbers[..])
            .await
            .into_iter()
            .collect::<Vec<_>>()
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_errors_carry_index_and_code_never_the_value() {
    let harness = Harness::start().await;
    let mut shinjuku = harness.client("city-shinjuku").await;
    let mut mhlw = harness.client("mhlw").await;
    let good = numbers(2, 5);
    let response = shinjuku
        .derive(DeriveRequest {
            numbers: vec![good[0].clone(), "123456789012".to_owned(), good[1].clone()],
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.policy_version.len(), 64);
    let derive_result::Result::Error(error) = response.results[1].result.clone().unwrap() else {
        panic!("item 1 must fail");
    };
    assert_eq!(
        (error.index, item_code(&error)),
        (1, RpcCode::InvalidArgument)
    );
    assert_eq!(error.reason, "check digit does not match");
    assert!(matches!(
        response.results[2].result,
        Some(derive_result::Result::Code(_))
    ));

    // A code of another agency is NOT_FOUND for reidentify; garbage is
    // INVALID_ARGUMENT.
    let mhlw_code = derive(&mut mhlw, &good[..1]).await.remove(0);
    let own = derive(&mut shinjuku, &good[..1]).await.remove(0);
    let response = shinjuku
        .reidentify(ReidentifyRequest {
            codes: vec![mhlw_code.clone(), "not-a-code".to_owned(), own],
        })
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<Option<RpcCode>> = response
        .results
        .iter()
        .map(|r| match r.result.as_ref().unwrap() {
            reidentify_result::Result::Error(e) => Some(item_code(e)),
            reidentify_result::Result::Number(_) => None,
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            Some(RpcCode::NotFound),
            Some(RpcCode::InvalidArgument),
            None
        ]
    );
    let text = format!("{response:?}");
    assert!(!text.contains(&mhlw_code));
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_request_failures_have_their_status_codes() {
    let harness = Harness::start().await;
    let mut mhlw = harness.client("mhlw").await;
    let mut moj = harness.client("moj").await;
    let code = derive(&mut mhlw, &numbers(1, 1)).await;

    let no_rule = mhlw
        .seal(seal_request(
            "city-shinjuku",
            "health",
            &["family-register"],
            code.clone(),
        ))
        .await
        .unwrap_err();
    assert_eq!(no_rule.code(), Code::PermissionDenied);
    assert!(
        no_rule
            .message()
            .contains("does not include data item family-register"),
        "{}",
        no_rule.message()
    );
    let reverse = harness
        .client("city-shinjuku")
        .await
        .seal(seal_request("mhlw", "health", &["local-tax"], code.clone()))
        .await
        .unwrap_err();
    assert_eq!(
        reverse.message(),
        "no rule lets city-shinjuku ask mhlw under affair health"
    );

    let no_capability = moj
        .derive(DeriveRequest {
            numbers: numbers(1, 2),
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(no_capability.code(), Code::PermissionDenied);
    assert_eq!(
        no_capability.message(),
        "agency moj does not have the derive capability"
    );

    let bad_field = mhlw
        .seal(seal_request(
            "city-shinjuku",
            "Health!",
            &["local-tax"],
            code.clone(),
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_field.code(), Code::InvalidArgument);
    assert!(
        bad_field.message().starts_with("field affair:"),
        "{}",
        bad_field.message()
    );

    let too_many = mhlw
        .derive(DeriveRequest {
            numbers: vec!["123456789018".to_owned(); 10_001],
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::ResourceExhausted);

    // A certificate from the right CA whose identity the policy does not know.
    let stranger = harness
        .client("nta")
        .await
        .derive(DeriveRequest::default())
        .await
        .unwrap_err();
    assert_eq!(stranger.code(), Code::Unauthenticated);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_only_redeem_for_their_addressee_and_before_expiry() {
    let harness = Harness::start().await;
    let mut mhlw = harness.client("mhlw").await;
    let mut shinjuku = harness.client("city-shinjuku").await;
    let mut moj = harness.client("moj").await;
    let codes = derive(&mut mhlw, &numbers(2, 3)).await;
    let for_moj = seal(
        &mut mhlw,
        seal_request("moj", "health", &["family-register"], codes.clone()),
    )
    .await;
    // Shinjuku holds a token addressed to MOJ: refused per item.
    let stolen = redeem(&mut shinjuku, for_moj.clone()).await;
    let error = stolen[0].as_ref().unwrap_err();
    assert_eq!(item_code(error), RpcCode::FailedPrecondition);
    assert_eq!(error.reason, "token is addressed to another agency");
    // MOJ may not hold numbers but receives its codes.
    assert!(redeem(&mut moj, for_moj).await.iter().all(Result::is_ok));

    let quick = seal(
        &mut mhlw,
        seal_request("city-shinjuku", "quick", &["local-tax"], codes),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let late = redeem(&mut shinjuku, quick).await;
    let error = late[0].as_ref().unwrap_err();
    assert_eq!(
        (item_code(error), error.reason.as_str()),
        (RpcCode::FailedPrecondition, "token has expired")
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_cas_and_missing_certificates_are_refused() {
    let harness = Harness::start().await;
    let other = DevCa::new("another CA").unwrap();
    let pem = other.client("mhlw").unwrap();
    let foreign = harness
        .tls()
        .identity(Identity::from_pem(pem.cert, pem.key));
    let mut client = CodesClient::new(harness.channel(foreign).await);
    let refused = client
        .derive(DeriveRequest {
            numbers: numbers(1, 1),
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .await;
    assert!(
        refused.is_err(),
        "a certificate of another CA must be refused"
    );

    let mut anonymous = CodesClient::new(harness.channel(harness.tls()).await);
    assert!(
        anonymous
            .derive(DeriveRequest {
                epoch: 0,
                numbers: numbers(1, 1),
                on_behalf_of: String::new()
            })
            .await
            .is_err()
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reload_takes_effect_and_a_bad_one_is_refused() {
    let harness = Harness::start().await;
    let mut mhlw = harness.client("mhlw").await;
    let mut moj = harness.client("moj").await;
    let codes = derive(&mut mhlw, &numbers(1, 4)).await;
    let token = seal(
        &mut mhlw,
        seal_request("moj", "health", &["family-register"], codes.clone()),
    )
    .await;

    // Withdraw the rule mhlw → moj.
    let without = POLICY.replace(
        "[[rule]]\nrequester = \"mhlw\"\naffair = \"health\"\nprovider = \"moj\"\nitems = [\"family-register\"]\ntoken_lifetime_seconds = 3600\n",
        "",
    );
    assert_ne!(without, POLICY);
    fs::write(harness.policy_path(), &without).unwrap();
    let version = harness.running().reload_policy().unwrap();
    let refused = mhlw
        .seal(seal_request("moj", "health", &["family-register"], codes))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let withdrawn = redeem(&mut moj, token).await;
    assert_eq!(
        item_code(withdrawn[0].as_ref().unwrap_err()),
        RpcCode::PermissionDenied
    );

    // A broken file is refused and the policy in force stays.
    fs::write(harness.policy_path(), "[[agency]]\nid = \"BROKEN\"\n").unwrap();
    assert!(harness.running().reload_policy().is_err());
    let response = mhlw
        .derive(DeriveRequest {
            numbers: numbers(1, 5),
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.policy_version, version.to_string());
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let harness = Harness::start().await;
    let pem = harness.ca.client("mhlw").unwrap();
    let channel = harness
        .channel(
            harness
                .tls()
                .identity(Identity::from_pem(pem.cert, pem.key)),
        )
        .await;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "fugo.v1.Codes".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.status, 1, "SERVING");

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let pem = harness.ca.client("mhlw").unwrap();
    let channel = harness
        .channel(
            harness
                .tls()
                .identity(Identity::from_pem(pem.cert, pem.key)),
        )
        .await;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"fugo.v1.Codes".to_owned()), "{names:?}");
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
    // The admin plane is served elsewhere and not advertised here (D236).
    assert!(!names.contains(&"fugo.v1.Admin".to_owned()), "{names:?}");

    // v1alpha too: grpcio's reflection client speaks only it.
    use tonic_reflection::pb::v1alpha as alpha;
    let pem = harness.ca.client("mhlw").unwrap();
    let channel = harness
        .channel(
            harness
                .tls()
                .identity(Identity::from_pem(pem.cert, pem.key)),
        )
        .await;
    let request = alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "fugo.v1.Codes".to_owned(),
            ),
        ),
    };
    let mut replies = alpha::server_reflection_client::ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        reply.message_response
    else {
        panic!("expected the file defining fugo.v1.Codes");
    };
    assert!(!files.file_descriptor_proto.is_empty());
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_unary_call_does_not_wait_for_delayed_acks() {
    // Without TCP_NODELAY a response written in pieces waits ~40 ms for the
    // client's delayed ACK (Nagle): a 10-number derive took 44 ms.
    let harness = Harness::start().await;
    let mut mhlw = harness.client("mhlw").await;
    let request = DeriveRequest {
        numbers: numbers(10, 11),
        on_behalf_of: String::new(),
        epoch: 0,
    };
    let mut latencies = Vec::new();
    for _ in 0..50 {
        let started = std::time::Instant::now();
        mhlw.derive(request.clone()).await.unwrap();
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    assert!(
        median < Duration::from_millis(20),
        "median {median:?} of 50 derive calls of 10 numbers"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_lets_an_in_flight_stream_finish() {
    let mut harness = Harness::start().await;
    let mut mhlw = harness.client("mhlw").await;
    let (sender, receiver) = tokio::sync::mpsc::channel::<DeriveRequest>(4);
    let mut responses = mhlw
        .derive_stream(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    sender
        .send(DeriveRequest {
            numbers: numbers(100, 1),
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .await
        .unwrap();
    assert_eq!(
        responses.message().await.unwrap().unwrap().results.len(),
        100
    );
    // Stop while the stream is open; keep sending for a while after.
    let running = harness.running.take().unwrap();
    let stopping = tokio::spawn(running.stop());
    for batch in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        sender
            .send(DeriveRequest {
                numbers: numbers(100, 10 + batch),
                on_behalf_of: String::new(),
                epoch: 0,
            })
            .await
            .unwrap();
        assert_eq!(
            responses.message().await.unwrap().unwrap().results.len(),
            100
        );
    }
    drop(sender);
    assert!(responses.message().await.unwrap().is_none());
    stopping.await.unwrap().unwrap();
}
