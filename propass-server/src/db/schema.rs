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
        revoked -> Bool,
        revoked_at -> Nullable<Timestamptz>,
    }
}
diesel::table! {
    clients (id) {
        id -> BigInt,
        name -> Text,
        created_at -> Timestamptz,
        partial_copy -> Bool,
    }
}
diesel::table! {
    quotas (client_id) {
        client_id -> BigInt,
        total -> BigInt,
        used -> BigInt,
        updated_at -> Timestamptz,
        version -> BigInt,
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
    }
}
diesel::joinable!(quotas -> clients (client_id));
diesel::allow_tables_to_appear_in_same_query!(users, devices, clients, quotas, copies);
