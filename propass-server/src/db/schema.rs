//! Diesel's view of the schema; the SQL that creates it is in `migrations/`.

diesel::table! {
    users (id) {
        id -> BigInt,
        username -> Text,
        password_hash -> Text,
        role -> Text,
        created_at -> Timestamptz,
        disabled -> Bool,
        token_epoch -> BigInt,
    }
}
diesel::table! {
    devices (device_id) {
        device_id -> Text,
        first_seen -> Timestamptz,
        last_seen -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
        status -> Text,
        name -> Nullable<Text>,
        enrolled -> Bool,
        token_epoch -> BigInt,
        agent_version -> Nullable<Text>,
        lease_target -> Nullable<BigInt>,
        lease_low_water -> Nullable<BigInt>,
    }
}
diesel::table! {
    device_clients (device_id, client_id) {
        device_id -> Text,
        client_id -> BigInt,
    }
}
diesel::table! {
    enrollment_codes (code_hash) {
        code_hash -> Text,
        device_name -> Nullable<Text>,
        device_id -> Nullable<Text>,
        client_ids -> Array<BigInt>,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
        used_by -> Nullable<Text>,
    }
}
diesel::table! {
    device_credentials (id) {
        id -> BigInt,
        device_id -> Text,
        secret_hash -> Text,
        issued_at -> Timestamptz,
        chain_expires_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
        successor -> Nullable<BigInt>,
        revoked -> Bool,
    }
}
diesel::table! {
    clients (id) {
        id -> BigInt,
        name -> Text,
        created_at -> Timestamptz,
        partial_copy -> Bool,
        lease_target -> Nullable<BigInt>,
        lease_low_water -> Nullable<BigInt>,
        archived_at -> Nullable<Timestamptz>,
        reader_keys -> Array<Text>,
    }
}
diesel::table! {
    quotas (client_id) {
        client_id -> BigInt,
        total -> BigInt,
        used -> BigInt,
        updated_at -> Timestamptz,
        version -> BigInt,
        leased -> BigInt,
    }
}
diesel::table! {
    leases (device_id, client_id) {
        device_id -> Text,
        client_id -> BigInt,
        units -> BigInt,
        updated_at -> Timestamptz,
    }
}
diesel::table! {
    copies (id) {
        id -> BigInt,
        idempotency_key -> Text,
        op_id -> Nullable<Uuid>,
        device_id -> Text,
        local_id -> BigInt,
        client_id -> BigInt,
        uid -> Text,
        kind -> Text,
        occurred_at -> Timestamptz,
        received_at -> Timestamptz,
        overdraft -> Bool,
        sectors -> Nullable<Text>,
        unverified -> Bool,
    }
}
diesel::joinable!(quotas -> clients (client_id));
diesel::joinable!(device_clients -> clients (client_id));
diesel::joinable!(device_clients -> devices (device_id));
diesel::table! {
    copy_voids (copy_id) {
        copy_id -> BigInt,
        voided_at -> Timestamptz,
        actor -> Text,
        reason -> Text,
    }
}
diesel::table! {
    audit_log (id) {
        id -> BigInt,
        at -> Timestamptz,
        actor -> Text,
        action -> Text,
        subject -> Text,
        detail -> Jsonb,
    }
}
diesel::table! {
    device_heartbeats (device_id) {
        device_id -> Text,
        received_at -> Timestamptz,
        clock_skew_ms -> BigInt,
        agent_version -> Text,
        pending -> BigInt,
        failed -> BigInt,
        oldest_pending_at -> Nullable<Timestamptz>,
        last_sync_at -> Nullable<Timestamptz>,
        last_error -> Nullable<Text>,
        reader -> Text,
        blanks_written -> BigInt,
        blanks_failed -> BigInt,
        storage_error -> Nullable<Text>,
    }
}
diesel::joinable!(leases -> clients (client_id));
diesel::allow_tables_to_appear_in_same_query!(
    users,
    leases,
    devices,
    device_clients,
    enrollment_codes,
    device_credentials,
    clients,
    quotas,
    copies
);
