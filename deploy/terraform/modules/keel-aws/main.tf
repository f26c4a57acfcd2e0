# Keel on AWS: a VPC across several zones, EKS for the gateway's pods (API, workers, migrate Job),
# RDS PostgreSQL with a streaming read replica, ElastiCache Redis with failover, the connection
# URLs in Secrets Manager (keys named like the Kubernetes Secrets keel-database and keel-redis), and
# an ECR repository for the image. deploy/terraform/README.md explains the choices.

data "aws_region" "current" {}

data "aws_availability_zones" "available" {
  state = "available"

  filter {
    name   = "opt-in-status"
    values = ["opt-in-not-required"]
  }
}

locals {
  azs = slice(data.aws_availability_zones.available.names, 0, var.az_count)

  # /20 private subnets (4,096 addresses each: EKS gives every pod a VPC address), then /24s for
  # the load balancers, the database and the cache, in separate blocks of the range.
  private_subnets = [for i in range(var.az_count) : cidrsubnet(var.vpc_cidr, 4, i)]
  public_subnets  = [for i in range(var.az_count) : cidrsubnet(var.vpc_cidr, 8, 48 + i)]
  db_subnets      = [for i in range(var.az_count) : cidrsubnet(var.vpc_cidr, 8, 64 + i)]
  cache_subnets   = [for i in range(var.az_count) : cidrsubnet(var.vpc_cidr, 8, 80 + i)]

  tags = merge(var.tags, {
    "app.kubernetes.io/part-of" = "keel"
    "keel/deployment"           = var.name
  })
}

# Relations between inputs that single-variable validation cannot express.
resource "terraform_data" "input_checks" {
  input = var.name

  lifecycle {
    precondition {
      condition     = var.node_min_size <= var.node_desired_size && var.node_desired_size <= var.node_max_size
      error_message = "node sizes must satisfy node_min_size <= node_desired_size <= node_max_size."
    }
    precondition {
      condition     = var.db_max_allocated_storage_gb >= var.db_allocated_storage_gb
      error_message = "db_max_allocated_storage_gb must be at least db_allocated_storage_gb."
    }
  }
}
