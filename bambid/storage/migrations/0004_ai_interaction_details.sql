-- AI interaction records say which model and backend answered and the tokens
-- the backend reported (0 when it reported none).
ALTER TABLE ai_interactions ADD COLUMN model TEXT NOT NULL DEFAULT '';
ALTER TABLE ai_interactions ADD COLUMN backend TEXT NOT NULL DEFAULT '';
ALTER TABLE ai_interactions ADD COLUMN prompt_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ai_interactions ADD COLUMN completion_tokens INTEGER NOT NULL DEFAULT 0;
