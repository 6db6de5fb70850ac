-- How a run's test answers write their arithmetic, per round: the equations "a op b = c" in the greedy eval
-- outputs (thousands commas removed first), how many answers hold one, and how many equations are false.
-- tutorloop sql runs/live-ma-pool2-prompt2-s0 -f scripts/equations_by_round.sql
WITH answers AS (
  SELECT round, example_id, correct, replace(output, ',', '') AS text FROM attempts
  WHERE split = 'test' AND phase = 'eval' AND mode = 'explain' AND sample_index = 0),
equations AS (
  SELECT round, example_id,
         regexp_extract(unnest(regexp_extract_all(text,
             '\d+(?:\.\d+)?\s*[-+*/x×÷]\s*\d+(?:\.\d+)?\s*=\s*\d+(?:\.\d+)?')),
             '^(\d+(?:\.\d+)?)\s*([-+*/x×÷])\s*(\d+(?:\.\d+)?)\s*=\s*(\d+(?:\.\d+)?)$', ['a', 'op', 'b', 'c']) AS e
  FROM answers),
checked AS (
  SELECT round, example_id,
         CASE WHEN e.op = '+' THEN e.a::DOUBLE + e.b::DOUBLE
              WHEN e.op = '-' THEN e.a::DOUBLE - e.b::DOUBLE
              WHEN e.op IN ('*', 'x', '×') THEN e.a::DOUBLE * e.b::DOUBLE
              WHEN e.b::DOUBLE <> 0 THEN e.a::DOUBLE / e.b::DOUBLE END AS value,
         e.c::DOUBLE AS written
  FROM equations),
per_answer AS (
  SELECT a.round, a.example_id, a.correct, count(c.written) AS n_equations,
         count(c.written) FILTER (WHERE c.value IS NULL OR abs(c.value - c.written) > 1e-6) AS n_false
  FROM answers a LEFT JOIN checked c USING (round, example_id) GROUP BY ALL)
SELECT round, count(*) AS answers, count(*) FILTER (WHERE correct) AS right, sum(n_equations) AS equations,
       count(*) FILTER (WHERE n_equations > 0) AS answers_with_one, sum(n_false) AS false_equations
FROM per_answer GROUP BY round ORDER BY round;
