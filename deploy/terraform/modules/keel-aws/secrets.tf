# The gateway's connection URLs, stored under the key names of the Kubernetes Secrets the
# manifests read (keel-database: url, replica-url; keel-redis: url). External Secrets Operator
# (or `kubectl create secret` fed from `aws secretsmanager get-secret-value`) copies them into the
# cluster; deploy/README.md shows both.

locals {
  # sslmode=require: RDS enforces TLS (rds.force_ssl); the image is built with postgres-tls.
  db_url = format(
    "postgres://%s:%s@%s:%d/%s?sslmode=require",
    aws_db_instance.primary.username, random_password.db.result,
    aws_db_instance.primary.address, aws_db_instance.primary.port, aws_db_instance.primary.db_name,
  )
  db_replica_url = var.db_read_replica ? format(
    "postgres://%s:%s@%s:%d/%s?sslmode=require",
    aws_db_instance.primary.username, random_password.db.result,
    aws_db_instance.replica[0].address, aws_db_instance.replica[0].port, aws_db_instance.primary.db_name,
  ) : null

  redis_url = var.redis_transit_encryption ? format(
    "rediss://:%s@%s:%d",
    random_password.redis[0].result,
    aws_elasticache_replication_group.redis.primary_endpoint_address, aws_elasticache_replication_group.redis.port,
    ) : format(
    "redis://%s:%d",
    aws_elasticache_replication_group.redis.primary_endpoint_address, aws_elasticache_replication_group.redis.port,
  )
}

resource "aws_secretsmanager_secret" "database" {
  name                    = "${var.name}/keel-database"
  description             = "Keel database URLs (keys url and replica-url) for the Kubernetes Secret keel-database"
  recovery_window_in_days = var.secret_recovery_window_days
  tags                    = local.tags
}

resource "aws_secretsmanager_secret_version" "database" {
  secret_id = aws_secretsmanager_secret.database.id
  secret_string = jsonencode(merge(
    { url = local.db_url },
    var.db_read_replica ? { "replica-url" = local.db_replica_url } : {},
  ))
}

resource "aws_secretsmanager_secret" "redis" {
  name                    = "${var.name}/keel-redis"
  description             = "Keel Redis URL (key url) for the Kubernetes Secret keel-redis"
  recovery_window_in_days = var.secret_recovery_window_days
  tags                    = local.tags
}

resource "aws_secretsmanager_secret_version" "redis" {
  secret_id     = aws_secretsmanager_secret.redis.id
  secret_string = jsonencode({ url = local.redis_url })
}

# For the role that External Secrets Operator (or any reader) assumes: read these two secrets only.
data "aws_iam_policy_document" "read_secrets" {
  statement {
    sid       = "ReadKeelSecrets"
    actions   = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
    resources = [aws_secretsmanager_secret.database.arn, aws_secretsmanager_secret.redis.arn]
  }
}
