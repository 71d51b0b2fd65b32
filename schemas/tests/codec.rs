//! The codec against the local stack's Schema Registry (LOCUS_REGISTRY_URL), plus
//! registry-free property tests of the wire format.

use locus_schemas::{
    Codec, CodecError, LOCATION_AVSC, LocationFix, RegistryConfig, decode_with_schema,
    encode_with_schema, location_schema, value_subject, wire,
};
use proptest::prelude::*;

fn registry_url() -> String {
    std::env::var("LOCUS_REGISTRY_URL").unwrap_or_else(|_| "http://127.0.0.1:8081".into())
}

fn unique_topic(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn sample(seq: i64) -> LocationFix {
    LocationFix {
        tenant: "acme".into(),
        user_id: "u-42".into(),
        device_id: "d-7".into(),
        seq,
        ts: 1_760_000_000_000 + seq,
        lat: 48.85,
        lon: 2.35,
        accuracy_m: Some(4.5),
        altitude_m: Some(35.2),
        speed_mps: None,
        heading_deg: Some(90.0),
        battery_pct: Some(77),
        activity: Some("driving".into()),
        source: Some("gps".into()),
        received_at: 1_760_000_000_100 + seq,
    }
}

#[tokio::test]
async fn round_trip_through_the_registry() {
    let cfg = RegistryConfig {
        url: registry_url(),
        ..Default::default()
    };
    let topic = unique_topic("codec");
    let codec = Codec::new(&cfg, &topic).unwrap();
    let id = codec.register().await.unwrap();
    assert_eq!(codec.register().await.unwrap(), id, "same schema, same id");
    let bytes = codec.encode(&sample(1)).await.unwrap();
    assert_eq!(bytes[0], 0, "Confluent magic byte");
    assert_eq!(u32::from_be_bytes(bytes[1..5].try_into().unwrap()), id);
    assert_eq!(codec.decode(&bytes).await.unwrap(), sample(1));
    // A second codec (another process) decodes by id alone.
    let other = Codec::new(&cfg, &topic).unwrap();
    assert_eq!(other.decode(&bytes).await.unwrap(), sample(1));
}

#[tokio::test]
async fn unknown_schema_id_and_garbage_are_errors() {
    let cfg = RegistryConfig {
        url: registry_url(),
        ..Default::default()
    };
    let codec = Codec::new(&cfg, &unique_topic("codec-bad")).unwrap();
    codec.register().await.unwrap();
    let err = codec
        .decode(&[0, 0x7f, 0xff, 0xff, 0xf0, 1, 2])
        .await
        .unwrap_err();
    assert!(
        matches!(err, CodecError::Decode(_) | CodecError::Registry(_)),
        "{err}"
    );
    let err = codec.decode(b"{\"lat\": 1}").await.unwrap_err();
    assert!(matches!(err, CodecError::Framing(_)), "{err}");
    let good = codec.encode(&sample(2)).await.unwrap();
    let err = codec.decode(&good[..good.len() - 3]).await.unwrap_err();
    assert!(
        matches!(err, CodecError::Decode(_) | CodecError::Shape(_)),
        "{err}"
    );
}

#[tokio::test]
async fn unreachable_registry_is_a_registry_error() {
    let cfg = RegistryConfig {
        url: "http://127.0.0.1:1".into(),
        timeout_ms: 1_000,
        ..Default::default()
    };
    let codec = Codec::new(&cfg, "nowhere").unwrap();
    let err = codec.register().await.unwrap_err();
    assert!(matches!(err, CodecError::Registry(_)), "{err}");
}

/// Evolution as the registry enforces it for `location.avsc`: an added optional field with a
/// default passes BACKWARD; a new required field is refused with 409.
#[tokio::test]
async fn evolution_rules() {
    let http = reqwest::Client::new();
    let subject = value_subject(&unique_topic("evolve"));
    let post = |schema: String| {
        let http = http.clone();
        let url = format!("{}/subjects/{subject}/versions", registry_url());
        async move {
            http.post(url)
                .header("content-type", "application/vnd.schemaregistry.v1+json")
                .json(&serde_json::json!({ "schema": schema }))
                .send()
                .await
                .unwrap()
        }
    };
    let r = post(LOCATION_AVSC.to_string()).await;
    assert_eq!(r.status(), 200);

    let mut v2: serde_json::Value = serde_json::from_str(LOCATION_AVSC).unwrap();
    v2["fields"].as_array_mut().unwrap().push(serde_json::json!(
        {"name": "floor", "type": ["null", "int"], "default": null}
    ));
    let r = post(v2.to_string()).await;
    assert_eq!(
        r.status(),
        200,
        "optional field with default is BACKWARD compatible"
    );

    let mut v3 = v2.clone();
    v3["fields"].as_array_mut().unwrap().push(serde_json::json!(
        {"name": "zone", "type": "string"}
    ));
    let r = post(v3.to_string()).await;
    assert_eq!(r.status(), 409, "a new required field breaks BACKWARD");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error_code"], 409);
}

/// A registry in front of the real one that answers `500` to the first `fail` requests
/// (then passes everything through), and counts the requests it saw.
struct FlakyRegistry {
    url: String,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

async fn flaky_registry(fail: usize) -> FlakyRegistry {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let upstream = registry_url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                // One request per connection: read its head (and body, if any), answer or
                // forward it, then close.
                let mut req = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    let Ok(n) = client.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&req);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if req.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                if seen.fetch_add(1, Ordering::SeqCst) < fail {
                    let body = r#"{"error_code":50001,"message":"the store is down"}"#;
                    let resp = format!(
                        "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = client.write_all(resp.as_bytes()).await;
                    return;
                }
                // Forward, asking the registry to close after its answer.
                let text =
                    String::from_utf8_lossy(&req).replacen("\r\n", "\r\nconnection: close\r\n", 1);
                let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = up.write_all(text.as_bytes()).await;
                let mut resp = Vec::new();
                let _ = up.read_to_end(&mut resp).await;
                let _ = client.write_all(&resp).await;
            });
        }
    });
    FlakyRegistry { url, requests }
}

/// A registry failing with 500 is an outage, not bad data: the codec says `Registry` (callers
/// retry and never dead-letter) and remembers nothing of it, so the next call after the
/// registry recovers succeeds — for encoding, and for decoding a value of another registered
/// schema. (Before, a 500 was an encode/decode error and the converter kept it per schema id.)
#[tokio::test]
async fn a_registry_that_fails_once_is_an_outage_and_recovers() {
    let topic = unique_topic("flaky");
    let flaky = flaky_registry(1).await;
    let cfg = RegistryConfig {
        url: flaky.url.clone(),
        ..Default::default()
    };
    let codec = Codec::new(&cfg, &topic).unwrap();
    let err = codec.encode(&sample(1)).await.unwrap_err();
    assert!(matches!(err, CodecError::Registry(_)), "{err}");
    let bytes = codec.encode(&sample(1)).await.expect("recovered");
    assert_eq!(codec.decode(&bytes).await.unwrap(), sample(1));

    // A value written with an evolved schema (one more optional field), read by a codec whose
    // registry fails its first request.
    let mut v2: serde_json::Value = serde_json::from_str(LOCATION_AVSC).unwrap();
    v2["fields"].as_array_mut().unwrap().push(serde_json::json!(
        {"name": "floor", "type": ["null", "int"], "default": null}
    ));
    let r: serde_json::Value = reqwest::Client::new()
        .post(format!(
            "{}/subjects/{}/versions",
            registry_url(),
            value_subject(&topic)
        ))
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .json(&serde_json::json!({ "schema": v2.to_string() }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let v2_id = r["id"].as_u64().unwrap() as u32;
    let v2_schema = apache_avro::Schema::parse_str(&v2.to_string()).unwrap();
    let evolved = encode_with_schema(&v2_schema, v2_id, &sample(2)).unwrap();
    let reader = Codec::new(
        &RegistryConfig {
            url: flaky_registry(1).await.url,
            ..Default::default()
        },
        &topic,
    )
    .unwrap();
    let err = reader.decode(&evolved).await.unwrap_err();
    assert!(matches!(err, CodecError::Registry(_)), "{err}");
    assert_eq!(reader.decode(&evolved).await.expect("recovered"), sample(2));
}

/// An id the registry does not have is bad data (`Decode`), asked about once a minute at most.
#[tokio::test]
async fn unknown_schema_ids_cost_one_registry_call_each() {
    let flaky = flaky_registry(0).await;
    let codec = Codec::new(
        &RegistryConfig {
            url: flaky.url.clone(),
            ..Default::default()
        },
        &unique_topic("unknown"),
    )
    .unwrap();
    let value = [0, 0x7f, 0xff, 0xff, 0xf0, 1, 2];
    for _ in 0..5 {
        let err = codec.decode(&value).await.unwrap_err();
        assert!(matches!(err, CodecError::Decode(_)), "{err}");
    }
    assert_eq!(
        flaky.requests.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one registry call for five values of one unknown id"
    );
}

fn arb_fix() -> impl Strategy<Value = LocationFix> {
    (
        ("[a-z]{1,12}", "\\PC{1,40}", "[a-zA-Z0-9-]{1,36}"),
        (
            any::<i64>(),
            any::<i64>(),
            -90.0..=90.0f64,
            -180.0..=180.0f64,
        ),
        (
            proptest::option::of(0.0f32..1000.0),
            proptest::option::of(any::<f64>()),
            proptest::option::of(0.0f32..100.0),
            proptest::option::of(0.0f32..360.0),
            proptest::option::of(0..=100i32),
        ),
        (
            proptest::option::of("\\PC{0,20}"),
            proptest::option::of("[a-z]{0,8}"),
            any::<i64>(),
        ),
    )
        .prop_map(
            |(
                (tenant, user_id, device_id),
                (seq, ts, lat, lon),
                (acc, alt, spd, hdg, bat),
                (activity, source, received_at),
            )| {
                LocationFix {
                    tenant,
                    user_id,
                    device_id,
                    seq,
                    ts,
                    lat,
                    lon,
                    accuracy_m: acc,
                    altitude_m: alt.filter(|a| !a.is_nan()),
                    speed_mps: spd,
                    heading_deg: hdg,
                    battery_pct: bat,
                    activity,
                    source,
                    received_at,
                }
            },
        )
}

proptest! {
    #[test]
    fn wire_format_round_trips(fix in arb_fix(), id in any::<u32>()) {
        let schema = location_schema();
        let bytes = encode_with_schema(&schema, id, &fix).unwrap();
        prop_assert_eq!(&bytes[1..5], &id.to_be_bytes());
        prop_assert_eq!(decode_with_schema(&schema, &bytes).unwrap(), fix);
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode_with_schema(&location_schema(), &bytes);
    }

    #[test]
    fn every_truncation_is_an_error(fix in arb_fix(), cut in 0usize..1000) {
        let schema = location_schema();
        let bytes = encode_with_schema(&schema, 1, &fix).unwrap();
        let cut = cut % bytes.len();
        prop_assert!(decode_with_schema(&schema, &bytes[..cut]).is_err());
        prop_assert!(wire::read_fix(&bytes[5..cut.max(5)]).is_err());
    }

    /// The direct encoder writes exactly the generic encoder's bytes, and the direct decoder
    /// reads them back to the same fix.
    #[test]
    fn direct_path_matches_the_generic_one(fix in arb_fix(), id in any::<u32>()) {
        let generic = encode_with_schema(&location_schema(), id, &fix).unwrap();
        prop_assert_eq!(&wire::encode_framed(id, &fix), &generic);
        prop_assert_eq!(wire::read_fix(&generic[5..]).unwrap(), fix);
    }

    /// On any input the direct decoder agrees with the generic one: both accept (the same
    /// fix) or both refuse.
    #[test]
    fn direct_decoder_agrees_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
        let mut framed = vec![0, 0, 0, 0, 1];
        framed.extend_from_slice(&bytes);
        let generic = decode_with_schema(&location_schema(), &framed).ok();
        prop_assert_eq!(wire::read_fix(&bytes).ok(), generic);
    }
}
