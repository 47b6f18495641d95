-- TARS-1004 (T.A.R.S. v1.0.1): three composite indexes, one per hot evaluation-API query.
--
-- Each must be built with CREATE INDEX CONCURRENTLY, which takes only a SHARE UPDATE EXCLUSIVE lock so
-- inserts and updates keep running during the build. It cannot run inside a transaction block, and a
-- build that fails (lock timeout, statement timeout, cancel) leaves an INVALID index behind that the
-- planner ignores but every write still maintains. That is why there is deliberately no IF NOT EXISTS
-- here: it would "succeed" on the invalid leftover and leave it invalid. The plugin (tars-run apply)
-- checks pg_index.indisvalid before and after each build, drops an invalid leftover with
-- DROP INDEX CONCURRENTLY and builds again, and retries a build that hit lock_timeout.
--
-- Running this file by hand (psql, autocommit): the SETs below keep a build from queueing behind a
-- long transaction for ever; check pg_index.indisvalid afterwards.
-- Rollback: DROP INDEX CONCURRENTLY IF EXISTS <name>; for each index (tars-run rollback).
--
-- Column order: equality predicates first, then the ORDER BY columns, then the primary key as a unique
-- tiebreaker so keyset pagination ("rows after (created_at, id)") is exact and every page is one index
-- range scan that stops after LIMIT rows. Every column of a sort has the same direction here, so a
-- B-tree could also be read backwards; the DESC declarations match the queries' ORDER BY so the
-- definition reads like the query and the plan is a plain forward Index Scan with no Sort node.

SET lock_timeout = '2s';
SET statement_timeout = '30min';

-- agent_history: WHERE agent_id = $1 ORDER BY created_at DESC, id DESC
-- agent_id is the only equality (a few hot agents own a large share of the rows, so the planner must
-- not rely on its selectivity alone); created_at DESC, id DESC is the page order.
CREATE INDEX CONCURRENTLY ix_evaluations_agent_created
    ON evaluations (agent_id, created_at DESC, id DESC);

-- region_status_feed: WHERE region = $1 AND status = $2 ORDER BY created_at DESC, id DESC
-- Both equalities lead; region first because the dashboard's region-only views can use the prefix,
-- status second (four values), then the page order.
CREATE INDEX CONCURRENTLY ix_evaluations_region_status_created
    ON evaluations (region, status, created_at DESC, id DESC);

-- region_leaderboard: WHERE region = $1 AND status = 'completed' ORDER BY reward DESC, id DESC
-- Partial on status = 'completed' (the only rows with a reward, ~90% of them but none of the churn of
-- pending/running rows being updated), region as the equality, reward DESC for the ranking.
CREATE INDEX CONCURRENTLY ix_evaluations_region_reward_completed
    ON evaluations (region, reward DESC, id DESC)
    WHERE status = 'completed';
