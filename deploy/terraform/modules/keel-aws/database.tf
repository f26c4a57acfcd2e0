# RDS PostgreSQL: a Multi-AZ primary and one streaming read replica. Keel keeps one schema per
# domain in one database and reads lag-tolerant queries from the replica (database.replica_url).
# Plain RDS rather than Aurora: its primary and replica endpoints map one to one onto Keel's two
# URLs, and it costs less at the sizes docs/SCALING.md starts from.

resource "random_password" "db" {
  length = 40
  # The password goes into a URL: letters and digits only, so no percent-encoding is needed.
  special = false
}

resource "aws_security_group" "db" {
  name        = "${var.name}-postgres"
  description = "PostgreSQL: reachable from the EKS nodes (and so from the pods) only"
  vpc_id      = module.vpc.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "db_from_nodes" {
  security_group_id            = aws_security_group.db.id
  description                  = "PostgreSQL from the EKS nodes"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = module.eks.node_security_group_id
}

resource "aws_db_parameter_group" "postgres" {
  name_prefix = "${var.name}-pg${var.db_engine_version}-"
  family      = "postgres${var.db_engine_version}"
  description = "Keel: TLS required, slow statements logged"

  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }

  # Statements slower than 500 ms go to the PostgreSQL log (the gateway's own statement_timeout
  # is 10 s).
  parameter {
    name  = "log_min_duration_statement"
    value = "500"
  }

  # Query statistics for the runbook's slow-query checks.
  parameter {
    name         = "shared_preload_libraries"
    value        = "pg_stat_statements"
    apply_method = "pending-reboot"
  }

  tags = local.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_db_instance" "primary" {
  identifier     = "${var.name}-postgres"
  engine         = "postgres"
  engine_version = var.db_engine_version
  instance_class = var.db_instance_class

  db_name  = "keel"
  username = "keel"
  password = random_password.db.result
  port     = 5432

  allocated_storage     = var.db_allocated_storage_gb
  max_allocated_storage = var.db_max_allocated_storage_gb
  storage_type          = "gp3"
  storage_encrypted     = true

  multi_az               = var.db_multi_az
  db_subnet_group_name   = module.vpc.database_subnet_group_name
  vpc_security_group_ids = [aws_security_group.db.id]
  parameter_group_name   = aws_db_parameter_group.postgres.name
  publicly_accessible    = false

  backup_retention_period    = var.db_backup_retention_days
  copy_tags_to_snapshot      = true
  auto_minor_version_upgrade = true
  deletion_protection        = var.deletion_protection
  skip_final_snapshot        = !var.deletion_protection
  final_snapshot_identifier  = var.deletion_protection ? "${var.name}-postgres-final" : null

  performance_insights_enabled = true

  tags = local.tags

  depends_on = [terraform_data.input_checks]
}

resource "aws_db_instance" "replica" {
  count = var.db_read_replica ? 1 : 0

  identifier          = "${var.name}-postgres-replica"
  replicate_source_db = aws_db_instance.primary.identifier
  instance_class      = var.db_instance_class

  storage_type           = "gp3"
  storage_encrypted      = true
  max_allocated_storage  = var.db_max_allocated_storage_gb
  vpc_security_group_ids = [aws_security_group.db.id]
  parameter_group_name   = aws_db_parameter_group.postgres.name
  publicly_accessible    = false

  # A replica has no backups of its own; it is rebuilt from the primary.
  backup_retention_period    = 0
  skip_final_snapshot        = true
  auto_minor_version_upgrade = true

  performance_insights_enabled = true

  tags = local.tags
}
