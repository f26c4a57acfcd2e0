-- Platform administrators (granted with `gateway admin grant-admin EMAIL`) may act across
-- organizations where a domain allows it, e.g. billing's credit grants.
ALTER TABLE users ADD COLUMN platform_admin BOOLEAN NOT NULL DEFAULT FALSE;
