output "vpc_id" {
  description = "ID of the VPC."
  value       = module.vpc.vpc_id
}

output "vpc_cidr" {
  description = "Address range of the VPC: the production overlay's data-store egress NetworkPolicy and KEEL_HTTP__TRUSTED_PROXIES use it."
  value       = module.vpc.vpc_cidr_block
}

output "private_subnet_ids" {
  description = "Subnets of the EKS nodes and pods."
  value       = module.vpc.private_subnets
}

output "cluster_name" {
  description = "Name of the EKS cluster."
  value       = module.eks.cluster_name
}

output "cluster_endpoint" {
  description = "Endpoint of the Kubernetes API."
  value       = module.eks.cluster_endpoint
}

output "cluster_certificate_authority_data" {
  description = "Base64 CA certificate of the Kubernetes API."
  value       = module.eks.cluster_certificate_authority_data
}

output "kubeconfig_command" {
  description = "Writes a kubeconfig entry for the cluster."
  value       = "aws eks update-kubeconfig --name ${module.eks.cluster_name} --region ${data.aws_region.current.name}"
}

output "db_primary_address" {
  description = "Host name of the PostgreSQL primary."
  value       = aws_db_instance.primary.address
}

output "db_replica_address" {
  description = "Host name of the PostgreSQL read replica (null without one)."
  value       = var.db_read_replica ? aws_db_instance.replica[0].address : null
}

output "redis_primary_address" {
  description = "Host name of the Redis primary."
  value       = aws_elasticache_replication_group.redis.primary_endpoint_address
}

output "database_secret_arn" {
  description = "Secrets Manager secret with the keys url and replica-url (Kubernetes Secret keel-database)."
  value       = aws_secretsmanager_secret.database.arn
}

output "redis_secret_arn" {
  description = "Secrets Manager secret with the key url (Kubernetes Secret keel-redis)."
  value       = aws_secretsmanager_secret.redis.arn
}

output "secrets_read_policy_json" {
  description = "IAM policy that reads the two secrets, for External Secrets Operator's role."
  value       = data.aws_iam_policy_document.read_secrets.json
}

output "ecr_repository_url" {
  description = "Push the gateway image here; set it in the production overlay with `kustomize edit set image`."
  value       = aws_ecr_repository.gateway.repository_url
}
