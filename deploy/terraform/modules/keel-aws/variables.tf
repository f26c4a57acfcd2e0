variable "name" {
  description = "Name of this deployment (e.g. keel-prod). Prefixes every resource; lower case letters, digits and hyphens."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,22}[a-z0-9]$", var.name))
    error_message = "name must be 3 to 24 characters of lower case letters, digits and hyphens, starting with a letter and not ending with a hyphen (it prefixes RDS and ElastiCache identifiers, which are limited in length)."
  }
}

variable "vpc_cidr" {
  description = "Address range of the VPC. Subnets are carved from it: three /20 private subnets for the nodes and pods, and /24 public, database and cache subnets per zone. The Kubernetes production overlay allows egress to the data stores within this range."
  type        = string
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && try(tonumber(split("/", var.vpc_cidr)[1]) <= 16, false)
    error_message = "vpc_cidr must be an IPv4 CIDR block of /16 or larger (the subnet layout needs 16 bits of room)."
  }
}

variable "az_count" {
  description = "Number of availability zones to spread subnets, nodes, the database and Redis over."
  type        = number
  default     = 3

  validation {
    condition     = var.az_count >= 2 && var.az_count <= 6 && floor(var.az_count) == var.az_count
    error_message = "az_count must be a whole number from 2 to 6: Multi-AZ databases, Redis failover and the API's zone spread need at least two zones."
  }
}

variable "single_nat_gateway" {
  description = "One NAT gateway for all zones (cheaper) instead of one per zone (survives a zone outage)."
  type        = bool
  default     = false
}

variable "kubernetes_version" {
  description = "EKS control plane version, as MAJOR.MINOR."
  type        = string
  default     = "1.33"

  validation {
    condition     = can(regex("^1\\.(2[89]|3[0-9])$", var.kubernetes_version))
    error_message = "kubernetes_version must be MAJOR.MINOR between 1.28 and 1.39 (the manifests use matchLabelKeys in topology spread and unhealthyPodEvictionPolicy)."
  }
}

variable "cluster_endpoint_public_access_cidrs" {
  description = "Addresses that may reach the Kubernetes API endpoint from the internet. Empty: the endpoint is private (reach it through a VPN or a bastion in the VPC)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.cluster_endpoint_public_access_cidrs : can(cidrhost(c, 0))])
    error_message = "Every entry of cluster_endpoint_public_access_cidrs must be a CIDR block."
  }
}

variable "node_instance_types" {
  description = "EC2 instance types of the managed node group, in order of preference."
  type        = list(string)
  default     = ["m6i.xlarge"]

  validation {
    condition     = length(var.node_instance_types) > 0
    error_message = "node_instance_types needs at least one instance type."
  }
}

variable "node_min_size" {
  description = "Fewest nodes. At least one per zone keeps the API's zone spread satisfiable."
  type        = number
  default     = 3

  validation {
    condition     = var.node_min_size >= 1
    error_message = "node_min_size must be at least 1."
  }
}

variable "node_max_size" {
  description = "Most nodes the node group (and a cluster autoscaler or Karpenter) may reach; size it for the autoscalers' maxReplicaCount."
  type        = number
  default     = 12

  validation {
    condition     = var.node_max_size >= 1
    error_message = "node_max_size must be at least 1."
  }
}

variable "node_desired_size" {
  description = "Nodes at creation; a cluster autoscaler adjusts it afterwards."
  type        = number
  default     = 3
}

variable "db_instance_class" {
  description = "RDS instance class of the primary and the read replica. RDS derives max_connections from its memory (about 1,700 for 16 GiB); see docs/SCALING.md for the connection budget."
  type        = string
  default     = "db.r6g.large"

  validation {
    condition     = can(regex("^db\\.", var.db_instance_class))
    error_message = "db_instance_class must be an RDS instance class (db.*)."
  }
}

variable "db_engine_version" {
  description = "PostgreSQL major version (RDS picks the latest minor and upgrades minors automatically)."
  type        = string
  default     = "16"

  validation {
    condition     = contains(["15", "16", "17"], var.db_engine_version)
    error_message = "db_engine_version must be 15, 16 or 17."
  }
}

variable "db_allocated_storage_gb" {
  description = "Initial gp3 storage of the primary, in GiB; storage autoscaling grows it up to db_max_allocated_storage_gb."
  type        = number
  default     = 100

  validation {
    condition     = var.db_allocated_storage_gb >= 20 && var.db_allocated_storage_gb <= 65536
    error_message = "db_allocated_storage_gb must be between 20 and 65536."
  }
}

variable "db_max_allocated_storage_gb" {
  description = "Upper bound of storage autoscaling, in GiB."
  type        = number
  default     = 1000

  validation {
    condition     = var.db_max_allocated_storage_gb >= 20 && var.db_max_allocated_storage_gb <= 65536
    error_message = "db_max_allocated_storage_gb must be between 20 and 65536."
  }
}

variable "db_multi_az" {
  description = "A synchronous standby in another zone for the primary (automatic failover)."
  type        = bool
  default     = true
}

variable "db_read_replica" {
  description = "Create a streaming read replica; the gateway sends lag-tolerant reads to it (KEEL_DATABASE__REPLICA_URL)."
  type        = bool
  default     = true
}

variable "db_backup_retention_days" {
  description = "Days of automated backups and point-in-time recovery."
  type        = number
  default     = 14

  validation {
    condition     = var.db_backup_retention_days >= 1 && var.db_backup_retention_days <= 35
    error_message = "db_backup_retention_days must be between 1 and 35 (RDS's range; 0 would disable backups and the read replica)."
  }
}

variable "redis_node_type" {
  description = "ElastiCache node type."
  type        = string
  default     = "cache.r7g.large"

  validation {
    condition     = can(regex("^cache\\.", var.redis_node_type))
    error_message = "redis_node_type must be an ElastiCache node type (cache.*)."
  }
}

variable "redis_engine_version" {
  description = "Redis OSS engine version of the ElastiCache replication group."
  type        = string
  default     = "7.1"

  validation {
    condition     = can(regex("^[67]\\.[0-9]+$", var.redis_engine_version))
    error_message = "redis_engine_version must be MAJOR.MINOR of Redis 6 or 7."
  }
}

variable "redis_replicas" {
  description = "Read replicas of the Redis primary. At least one enables automatic failover across zones."
  type        = number
  default     = 1

  validation {
    condition     = var.redis_replicas >= 0 && var.redis_replicas <= 5
    error_message = "redis_replicas must be between 0 and 5."
  }
}

# Off by default: the gateway's Redis client is built without TLS today (the workspace's `redis`
# dependency has no TLS feature), so a rediss:// URL would leave every process on its in-process
# fallbacks. Without TLS, traffic stays inside the VPC, and only the security group (the EKS
# nodes) and the NetworkPolicy egress on 6379 guard Redis: ElastiCache allows AUTH only with TLS.
# Turn it on once the gateway is built with Redis TLS support (redis's `tokio-rustls-comp`).
variable "redis_transit_encryption" {
  description = "TLS and AUTH between the gateway and Redis (URL scheme rediss://). Needs a gateway built with Redis TLS support, which today's build lacks: leave false until it has it."
  type        = bool
  default     = false
}

variable "deletion_protection" {
  description = "Protect the database from deletion and take a final snapshot on destroy. Turn off only for throwaway environments."
  type        = bool
  default     = true
}

variable "secret_recovery_window_days" {
  description = "Days a deleted Secrets Manager secret can still be restored (0 deletes at once)."
  type        = number
  default     = 7

  validation {
    condition     = var.secret_recovery_window_days == 0 || (var.secret_recovery_window_days >= 7 && var.secret_recovery_window_days <= 30)
    error_message = "secret_recovery_window_days must be 0 or between 7 and 30."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
