-- Schema of the analyser example. The program applies it at start, under
-- an advisory lock; every statement is idempotent.

-- One row per analysed task. task_id is the queue's task ID, so a task
-- delivered twice (at-least-once) still has one row. Rows of one order_id
-- sorted by seq are in the order the tasks were analysed, which the queue
-- keeps equal to the order they were enqueued.
CREATE TABLE IF NOT EXISTS tasks (
    task_id    text        PRIMARY KEY,
    seq        bigserial   NOT NULL UNIQUE,     -- insert order
    order_id   numeric(20) NOT NULL,            -- the task's OrderID (a uint64)
    payload    bytea       NOT NULL,
    added_at   timestamptz NOT NULL,            -- when the producer enqueued it (ms)
    attempt    integer     NOT NULL,            -- the delivery that wrote the row
    analyser   integer     NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS tasks_order_id_seq ON tasks (order_id, seq);

-- One row per dead-lettered task, mirrored from the queue's dead-letter
-- store: its last error and attempts. A task that is replayed and dies
-- again keeps one row, holding its latest death.
CREATE TABLE IF NOT EXISTS failed_jobs (
    task_id     text        PRIMARY KEY,
    order_id    numeric(20) NOT NULL,
    payload     bytea,                           -- raw bytes for a malformed record
    attempts    integer     NOT NULL,
    error       text        NOT NULL,
    died_at     timestamptz NOT NULL,
    analyser    integer     NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
