-- triggerer schema, SQLite flavour. Keep equivalent to migrations/postgres (tests/migrations.rs
-- checks both define the same tables and columns). Times are UTC, stored as RFC 3339 text.

CREATE TABLE job (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    job_type         TEXT NOT NULL,
    state            TEXT NOT NULL,
    hostname         TEXT NOT NULL,
    start_date       TEXT NOT NULL,
    end_date         TEXT,
    latest_heartbeat TEXT NOT NULL
);
CREATE INDEX job_type_heart ON job (job_type, latest_heartbeat);

CREATE TABLE dag (
    dag_id                          TEXT PRIMARY KEY,
    fileloc                         TEXT NOT NULL,
    is_paused                       BOOLEAN NOT NULL DEFAULT FALSE,
    is_stale                        BOOLEAN NOT NULL DEFAULT FALSE,
    schedule                        TEXT,
    timetable_summary               TEXT NOT NULL,
    asset_expression                TEXT,
    start_date                      TEXT,
    end_date                        TEXT,
    catchup                         BOOLEAN NOT NULL DEFAULT FALSE,
    max_active_runs                 INTEGER NOT NULL,
    next_dagrun                     TEXT,
    next_dagrun_data_interval_start TEXT,
    next_dagrun_data_interval_end   TEXT,
    next_dagrun_create_after        TEXT,
    last_parsed_time                TEXT NOT NULL
);
CREATE INDEX idx_next_dagrun_create_after ON dag (next_dagrun_create_after);

CREATE TABLE asset (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT NOT NULL UNIQUE,
    uri        TEXT NOT NULL,
    is_active  BOOLEAN NOT NULL DEFAULT TRUE,
    fileloc    TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE trigger (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    classpath      TEXT NOT NULL,
    kwargs         TEXT NOT NULL,
    hash           TEXT NOT NULL UNIQUE,
    created_date   TEXT NOT NULL,
    triggerer_id   INTEGER REFERENCES job (id) ON DELETE SET NULL,
    last_event_at  TEXT,
    last_error     TEXT,
    last_error_at  TEXT,
    failure_count  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX idx_trigger_triggerer_id ON trigger (triggerer_id);

CREATE TABLE asset_watcher (
    asset_id   INTEGER NOT NULL REFERENCES asset (id) ON DELETE CASCADE,
    trigger_id INTEGER NOT NULL REFERENCES trigger (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    PRIMARY KEY (asset_id, trigger_id)
);
CREATE INDEX idx_awm_trigger_id ON asset_watcher (trigger_id);

CREATE TABLE trigger_checkpoint (
    trigger_id INTEGER NOT NULL REFERENCES trigger (id) ON DELETE CASCADE,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (trigger_id, key)
);

CREATE TABLE dag_schedule_asset_reference (
    asset_id   INTEGER NOT NULL REFERENCES asset (id) ON DELETE CASCADE,
    dag_id     TEXT NOT NULL REFERENCES dag (dag_id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    PRIMARY KEY (asset_id, dag_id)
);
CREATE INDEX idx_dsar_dag_id ON dag_schedule_asset_reference (dag_id);

CREATE TABLE asset_event (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    asset_id   INTEGER NOT NULL REFERENCES asset (id) ON DELETE CASCADE,
    extra      TEXT NOT NULL,
    source     TEXT NOT NULL,
    trigger_id INTEGER,
    dedup_key  TEXT,
    timestamp  TEXT NOT NULL,
    UNIQUE (asset_id, dedup_key)
);
CREATE INDEX idx_asset_event_asset_timestamp ON asset_event (asset_id, timestamp);

-- One row per (DAG, asset event) still waiting to be consumed by a run: the queue references
-- the events it stands for, so no event is silently left behind (Airflow #56050).
CREATE TABLE asset_dag_run_queue (
    target_dag_id  TEXT NOT NULL REFERENCES dag (dag_id) ON DELETE CASCADE,
    asset_event_id INTEGER NOT NULL REFERENCES asset_event (id) ON DELETE CASCADE,
    asset_id       INTEGER NOT NULL REFERENCES asset (id) ON DELETE CASCADE,
    created_at     TEXT NOT NULL,
    PRIMARY KEY (target_dag_id, asset_event_id)
);
CREATE INDEX idx_adrq_asset_id ON asset_dag_run_queue (asset_id);

CREATE TABLE dag_run (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    dag_id              TEXT NOT NULL REFERENCES dag (dag_id) ON DELETE CASCADE,
    run_id              TEXT NOT NULL,
    run_type            TEXT NOT NULL,
    state               TEXT NOT NULL,
    logical_date        TEXT,
    data_interval_start TEXT,
    data_interval_end   TEXT,
    run_after           TEXT NOT NULL,
    conf                TEXT NOT NULL,
    queued_at           TEXT NOT NULL,
    start_date          TEXT,
    end_date            TEXT,
    creating_job_id     INTEGER,
    UNIQUE (dag_id, run_id),
    UNIQUE (dag_id, logical_date)
);
CREATE INDEX idx_dag_run_state ON dag_run (dag_id, state);
CREATE INDEX idx_dag_run_run_after ON dag_run (run_after);

CREATE TABLE dagrun_asset_event (
    dag_run_id INTEGER NOT NULL REFERENCES dag_run (id) ON DELETE CASCADE,
    event_id   INTEGER NOT NULL REFERENCES asset_event (id) ON DELETE CASCADE,
    PRIMARY KEY (dag_run_id, event_id)
);
CREATE INDEX idx_dagrun_asset_event_event_id ON dagrun_asset_event (event_id);
