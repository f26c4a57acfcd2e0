# An example production root: one Keel deployment in one region.
#
#   cd deploy/terraform/examples/production
#   terraform init          # add a backend first (an S3 bucket with locking): the state holds
#                           # the database and Redis passwords
#   terraform apply -var region=eu-west-1 -var 'cluster_endpoint_public_access_cidrs=["203.0.113.7/32"]'

terraform {
  required_version = ">= 1.6"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.70, < 6.0"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      "managed-by" = "terraform"
      "project"    = "keel"
    }
  }
}

module "keel" {
  source = "../../modules/keel-aws"

  name                                 = var.name
  vpc_cidr                             = "10.40.0.0/16"
  az_count                             = 3
  kubernetes_version                   = "1.33"
  cluster_endpoint_public_access_cidrs = var.cluster_endpoint_public_access_cidrs

  node_instance_types = ["m6i.xlarge"]
  node_min_size       = 3
  node_desired_size   = 3
  node_max_size       = 12

  db_instance_class        = "db.r6g.large"
  db_engine_version        = "16"
  db_multi_az              = true
  db_read_replica          = true
  db_backup_retention_days = 14

  # Transit encryption stays off until the gateway's Redis client is built with TLS (see the
  # module's variable redis_transit_encryption).
  redis_node_type          = "cache.r7g.large"
  redis_replicas           = 1
  redis_transit_encryption = false

  deletion_protection = true
}
