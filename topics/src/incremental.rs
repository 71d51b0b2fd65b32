//! IncrementalAlterConfigs (KIP-339), which rust-rdkafka does not wrap yet, through
//! librdkafka's C API. Incremental, unlike the legacy AlterConfigs, sets only the named keys
//! and leaves every other config of the topic as it is; it is also the only alter API some
//! Kafka-compatible brokers (tansu) implement.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::time::Duration;

use locus_kafka::rdkafka::admin::AdminClient;
use locus_kafka::rdkafka::client::DefaultClientContext;
use rdkafka_sys as rd;

/// Sets `configs` on topic `name`; Err carries the broker's or librdkafka's message.
pub fn set_topic_configs(
    admin: &AdminClient<DefaultClientContext>,
    name: &str,
    configs: &[(String, String)],
    timeout: Duration,
) -> Result<(), String> {
    let c_name = CString::new(name).map_err(|e| e.to_string())?;
    let pairs: Vec<(CString, CString)> = configs
        .iter()
        .map(|(k, v)| Ok((CString::new(k.as_str())?, CString::new(v.as_str())?)))
        .collect::<Result<_, std::ffi::NulError>>()
        .map_err(|e| e.to_string())?;
    let rk = admin.inner().native_ptr();
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: every pointer passed to librdkafka below is either created here and destroyed
    // before returning, or borrowed from `admin`, which outlives this call. Strings are
    // NUL-terminated CStrings kept alive across the calls that read them.
    unsafe {
        let resource = rd::rd_kafka_ConfigResource_new(
            rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC,
            c_name.as_ptr(),
        );
        if resource.is_null() {
            return Err("librdkafka could not create a config resource".into());
        }
        let mut resources = [resource];
        let mut setup_error = None;
        for (k, v) in &pairs {
            let err = rd::rd_kafka_ConfigResource_add_incremental_config(
                resource,
                k.as_ptr(),
                rd::rd_kafka_AlterConfigOpType_t::RD_KAFKA_ALTER_CONFIG_OP_TYPE_SET,
                v.as_ptr(),
            );
            if !err.is_null() {
                setup_error = Some(
                    CStr::from_ptr(rd::rd_kafka_error_string(err))
                        .to_string_lossy()
                        .into_owned(),
                );
                rd::rd_kafka_error_destroy(err);
                break;
            }
        }
        if let Some(e) = setup_error {
            rd::rd_kafka_ConfigResource_destroy(resource);
            return Err(e);
        }
        let options = rd::rd_kafka_AdminOptions_new(
            rk,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_INCREMENTALALTERCONFIGS,
        );
        let mut errstr = [0 as std::os::raw::c_char; 512];
        rd::rd_kafka_AdminOptions_set_request_timeout(
            options,
            timeout_ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        let queue = rd::rd_kafka_queue_new(rk);
        rd::rd_kafka_IncrementalAlterConfigs(rk, resources.as_mut_ptr(), 1, options, queue);
        let event = rd::rd_kafka_queue_poll(queue, timeout_ms.saturating_add(1_000));
        let result = if event.is_null() {
            Err(format!("no answer within {timeout:?}"))
        } else if rd::rd_kafka_event_error(event)
            != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            Err(CStr::from_ptr(rd::rd_kafka_event_error_string(event))
                .to_string_lossy()
                .into_owned())
        } else {
            let res = rd::rd_kafka_event_IncrementalAlterConfigs_result(event);
            let mut count = 0usize;
            let items = rd::rd_kafka_IncrementalAlterConfigs_result_resources(res, &mut count);
            let mut outcome = Ok(());
            for i in 0..count {
                let item = *items.add(i);
                if rd::rd_kafka_ConfigResource_error(item)
                    != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                {
                    let msg = rd::rd_kafka_ConfigResource_error_string(item);
                    let code = rd::rd_kafka_err2str(rd::rd_kafka_ConfigResource_error(item));
                    outcome = Err(format!(
                        "{}{}",
                        CStr::from_ptr(code).to_string_lossy(),
                        if msg.is_null() {
                            String::new()
                        } else {
                            format!(": {}", CStr::from_ptr(msg).to_string_lossy())
                        }
                    ));
                }
            }
            outcome
        };
        if !event.is_null() {
            rd::rd_kafka_event_destroy(event);
        }
        rd::rd_kafka_queue_destroy(queue);
        rd::rd_kafka_AdminOptions_destroy(options);
        rd::rd_kafka_ConfigResource_destroy(resource);
        result
    }
}
