# ElastiCache Redis: a primary and var.redis_replicas replicas in other zones with automatic
# failover. Keel uses it for the shared cache (L2 and invalidation pub/sub) and the rate limits;
# when it is unreachable the gateway keeps serving on its in-process fallbacks.

resource "random_password" "redis" {
  count = var.redis_transit_encryption ? 1 : 0

  # ElastiCache AUTH tokens: 16 to 128 printable characters; letters and digits keep the URL plain.
  length  = 48
  special = false
}

resource "aws_security_group" "redis" {
  name        = "${var.name}-redis"
  description = "Redis: reachable from the EKS nodes (and so from the pods) only"
  vpc_id      = module.vpc.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "redis_from_nodes" {
  security_group_id            = aws_security_group.redis.id
  description                  = "Redis from the EKS nodes"
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  referenced_security_group_id = module.eks.node_security_group_id
}

resource "aws_elasticache_replication_group" "redis" {
  replication_group_id = "${var.name}-redis"
  description          = "Keel cache and rate limits (${var.name})"

  engine               = "redis"
  engine_version       = var.redis_engine_version
  node_type            = var.redis_node_type
  port                 = 6379
  parameter_group_name = "default.redis${split(".", var.redis_engine_version)[0]}"

  num_cache_clusters         = 1 + var.redis_replicas
  automatic_failover_enabled = var.redis_replicas > 0
  multi_az_enabled           = var.redis_replicas > 0

  subnet_group_name  = module.vpc.elasticache_subnet_group_name
  security_group_ids = [aws_security_group.redis.id]

  at_rest_encryption_enabled = true
  transit_encryption_enabled = var.redis_transit_encryption
  # AUTH requires TLS on ElastiCache; without TLS, only the security group guards Redis.
  auth_token = var.redis_transit_encryption ? random_password.redis[0].result : null

  snapshot_retention_limit   = 1
  auto_minor_version_upgrade = true
  apply_immediately          = false

  tags = local.tags
}
