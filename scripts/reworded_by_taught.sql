-- Where tailoring gains on the reworded test: each test question classed by whether the tailored arm's
-- first own round (the first round whose taught questions differ between the two arms of a seed) taught
-- its step chain (the same problem in other words); its share right the round before (shared by the
-- arms) and after that round in each arm, per seed and then over seeds.
-- tutorloop sql runs/reworded-s* runs/reworded-random-s* -f scripts/reworded_by_taught.sql
-- (a run whose name contains "random" is the random arm of the run named without "-random")
-- paired_t: the seeds' paired t statistic (df = seeds - 1; |t| > 2.09 is p < 0.05 at 20 seeds).
WITH taught_any AS (
  SELECT DISTINCT s.run, replace(s.run, '-random', '') AS seed_run, s.round, e.rationale AS chain
  FROM samples s JOIN examples e ON e.run = s.run AND e.example_id = s.example_id
  WHERE s.round >= 1 AND s.source NOT LIKE 'replay%' AND s.task = 'explain'),
first_own AS (
  SELECT seed_run, min(round) AS round FROM (
    SELECT seed_run, round, chain FROM taught_any GROUP BY ALL HAVING count(DISTINCT run) = 1)
  GROUP BY seed_run),
taught AS (
  SELECT t.seed_run, t.chain FROM taught_any t JOIN first_own f USING (seed_run, round)
  WHERE t.run NOT LIKE '%random%'),
graded AS (
  SELECT f.seed_run, a.run LIKE '%random%' AS is_random, a.round = f.round AS after, a.correct::int AS right_,
         CASE WHEN t.chain IS NOT NULL THEN 'chain taught by the tailored round' ELSE 'chain not taught' END AS class
  FROM attempts a JOIN examples e ON e.run = a.run AND e.example_id = a.example_id
  JOIN first_own f ON f.seed_run = replace(a.run, '-random', '') AND a.round IN (f.round - 1, f.round)
  LEFT JOIN taught t ON t.seed_run = f.seed_run AND t.chain = e.rationale
  WHERE a.split = 'test'),
per_seed AS (
  SELECT seed_run, class, count(*) FILTER (WHERE after AND NOT is_random) AS questions,
         avg(right_) FILTER (WHERE NOT after AND NOT is_random) AS before,
         avg(right_) FILTER (WHERE after AND NOT is_random) AS tailored,
         avg(right_) FILTER (WHERE after AND is_random) AS random
  FROM graded GROUP BY ALL)
SELECT class, count(*) AS seeds, sum(questions) AS questions, round(avg(before) * 100, 1) AS before_pct,
       round(avg(tailored) * 100, 1) AS tailored_pct, round(avg(random) * 100, 1) AS random_pct,
       round(avg(tailored - random) * 100, 1) AS mean_diff_pts, round(stddev_samp(tailored - random) * 100, 1) AS sd_pts,
       round(avg(tailored - random) / (stddev_samp(tailored - random) / sqrt(count(*))), 2) AS paired_t,
       sum((tailored > random)::int) AS seeds_tailored_better, sum((tailored < random)::int) AS seeds_random_better
FROM per_seed GROUP BY class ORDER BY class DESC
