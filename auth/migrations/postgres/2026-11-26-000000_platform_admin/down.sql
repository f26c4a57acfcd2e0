ALTER TABLE users DROP COLUMN platform_admin;
