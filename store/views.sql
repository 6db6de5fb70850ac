-- Views over the history, recreated on every migration. Plain SQL: they work in the duckdb CLI too.

-- One row per round: test (and validation) accuracy per mode, training-pool exam accuracy, teaching and
-- training counts, teacher cost, and seconds per phase.
CREATE OR REPLACE VIEW round_summary AS
SELECT
    r.round,
    r.kind,
    r.status,
    max(m.value) FILTER (WHERE m.split = 'test' AND m.name = 'accuracy') AS test_accuracy,
    max(m.value) FILTER (WHERE m.split = 'test' AND m.name = 'accuracy_answer') AS test_accuracy_answer,
    max(m.value) FILTER (WHERE m.split = 'test' AND m.name = 'accuracy_explain') AS test_accuracy_explain,
    -- The validation split (data.val_size, carved from the pool, never taught); null where a run has none.
    max(m.value) FILTER (WHERE m.split = 'val' AND m.name = 'accuracy') AS val_accuracy,
    max(m.value) FILTER (WHERE m.split = 'val' AND m.name = 'accuracy_answer') AS val_accuracy_answer,
    max(m.value) FILTER (WHERE m.split = 'val' AND m.name = 'accuracy_explain') AS val_accuracy_explain,
    max(m.value) FILTER (WHERE m.split = 'train' AND m.name = 'accuracy') AS pool_accuracy,
    CAST(max(m.value) FILTER (WHERE m.name = 'mistakes') AS INTEGER) AS mistakes,
    CAST(max(m.value) FILTER (WHERE m.name = 'rationales_accepted') AS INTEGER) AS rationales_accepted,
    CAST(max(m.value) FILTER (WHERE m.name = 'samples') AS INTEGER) AS samples,
    CAST(max(m.value) FILTER (WHERE m.name = 'contrast_pairs') AS INTEGER) AS contrast_pairs,
    -- Calls and cost from teacher_calls itself: a teach phase resumed halfway reports only its second
    -- half in metrics (the first half are cache hits then), but every paid call has its row.
    (SELECT CAST(count(*) AS INTEGER) FROM teacher_calls t WHERE t.round = r.round) AS teacher_calls,
    CAST(max(m.value) FILTER (WHERE m.name = 'cache_hits') AS INTEGER) AS cache_hits,
    (SELECT coalesce(sum(t.cost_usd), 0) FROM teacher_calls t WHERE t.round = r.round) AS teacher_cost_usd,
    max(m.value) FILTER (WHERE m.name = 'train_loss_last') AS train_loss_last,
    (SELECT p.seconds FROM phases p WHERE p.round = r.round AND p.name = 'exam') AS exam_s,
    (SELECT p.seconds FROM phases p WHERE p.round = r.round AND p.name = 'teach') AS teach_s,
    (SELECT p.seconds FROM phases p WHERE p.round = r.round AND p.name = 'train') AS train_s,
    (SELECT p.seconds FROM phases p WHERE p.round = r.round AND p.name = 'eval') AS eval_s,
    date_diff('millisecond', r.started_at, r.finished_at) / 1000.0 AS round_s
FROM rounds r
LEFT JOIN metrics m ON m.round = r.round
GROUP BY r.round, r.kind, r.status, r.started_at, r.finished_at
ORDER BY r.round;

-- One row per (question, round, phase, mode): was the student right, and on how many of its samples.
CREATE OR REPLACE VIEW question_history AS
SELECT
    a.example_id,
    a.split,
    a.round,
    a.phase,
    a.mode,
    bool_and(a.correct) AS correct,
    avg(CAST(a.correct AS INTEGER)) AS share_correct,
    count(*) AS samples,
    any_value(e.question) AS question,
    any_value(e.gold) AS gold
FROM attempts a
LEFT JOIN examples e ON e.example_id = a.example_id
GROUP BY a.example_id, a.split, a.round, a.phase, a.mode;

-- Between consecutive evaluated rounds: how many test questions went wrong->right and right->wrong.
CREATE OR REPLACE VIEW transitions AS
WITH per_round AS (
    SELECT example_id, split, mode, round, bool_and(correct) AS correct
    FROM attempts WHERE phase = 'eval'
    GROUP BY example_id, split, mode, round
),
evaluated AS (SELECT DISTINCT round FROM per_round),
consecutive AS (
    SELECT a.round AS from_round, min(b.round) AS to_round
    FROM evaluated a JOIN evaluated b ON b.round > a.round
    GROUP BY a.round
)
SELECT
    c.from_round,
    c.to_round,
    p1.split,
    p1.mode,
    count(*) FILTER (WHERE NOT p1.correct AND p2.correct) AS wrong_to_right,
    count(*) FILTER (WHERE p1.correct AND NOT p2.correct) AS right_to_wrong,
    count(*) FILTER (WHERE p1.correct AND p2.correct) AS stayed_right,
    count(*) FILTER (WHERE NOT p1.correct AND NOT p2.correct) AS stayed_wrong,
    coalesce(list(p1.example_id ORDER BY p1.example_id) FILTER (WHERE NOT p1.correct AND p2.correct), [])
        AS wrong_to_right_ids,
    coalesce(list(p1.example_id ORDER BY p1.example_id) FILTER (WHERE p1.correct AND NOT p2.correct), [])
        AS right_to_wrong_ids
FROM consecutive c
JOIN per_round p1 ON p1.round = c.from_round
JOIN per_round p2 ON p2.round = c.to_round AND p2.example_id = p1.example_id AND p2.mode = p1.mode
GROUP BY c.from_round, c.to_round, p1.split, p1.mode
ORDER BY c.from_round, p1.mode;

-- Per round, teacher and strategy: calls made and what they cost, rationales kept, why others were rejected.
CREATE OR REPLACE VIEW teacher_yield AS
WITH calls AS (
    SELECT round, teacher, strategy,
           count(*) AS calls,
           count(*) FILTER (WHERE status <> 'ok') AS failed_calls,
           sum(tokens_in) AS tokens_in,
           sum(tokens_out) AS tokens_out,
           coalesce(sum(cost_usd), 0) AS cost_usd
    FROM teacher_calls GROUP BY round, teacher, strategy
),
kept AS (
    SELECT round, teacher, strategy,
           count(*) AS rationales,
           count(*) FILTER (WHERE accepted) AS accepted,
           histogram(reject_reason) FILTER (WHERE NOT accepted) AS rejections
    FROM rationales GROUP BY round, teacher, strategy
)
SELECT
    coalesce(k.round, c.round) AS round,
    coalesce(k.teacher, c.teacher) AS teacher,
    coalesce(k.strategy, c.strategy) AS strategy,
    coalesce(c.calls, 0) AS calls,
    coalesce(c.failed_calls, 0) AS failed_calls,
    coalesce(k.rationales, 0) AS rationales,
    coalesce(k.accepted, 0) AS accepted,
    k.accepted / nullif(k.rationales, 0) AS acceptance_rate,
    k.rejections,
    c.tokens_in,
    c.tokens_out,
    coalesce(c.cost_usd, 0) AS cost_usd,
    c.cost_usd / nullif(k.accepted, 0) AS cost_per_accepted_usd
FROM kept k
FULL OUTER JOIN calls c ON c.round = k.round AND c.teacher = k.teacher AND c.strategy = k.strategy
ORDER BY round, teacher, strategy;

-- Loss terms per optimizer step per round, long format: term = total | contrast | <task>.
CREATE OR REPLACE VIEW training_curves AS
SELECT round, step, epoch, lr, 'total' AS term, loss AS value FROM train_steps
UNION ALL
SELECT round, step, epoch, lr, 'contrast' AS term, contrast_loss AS value FROM train_steps
WHERE contrast_loss IS NOT NULL
UNION ALL
SELECT round, step, epoch, lr, entry.key AS term, entry.value AS value
FROM (
    SELECT round, step, epoch, lr, unnest(map_entries(CAST(task_losses AS MAP(VARCHAR, DOUBLE)))) AS entry
    FROM train_steps WHERE task_losses IS NOT NULL
);
