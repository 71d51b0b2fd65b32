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
