output "kubeconfig_command" {
  description = "Run this to point kubectl at the cluster."
  value       = module.keel.kubeconfig_command
}

output "ecr_repository_url" {
  description = "Where to push the gateway image."
  value       = module.keel.ecr_repository_url
}

output "vpc_cidr" {
  description = "Must equal the CIDR in deploy/kubernetes/overlays/production (datastores-egress.yaml, KEEL_HTTP__TRUSTED_PROXIES)."
  value       = module.keel.vpc_cidr
}

output "database_secret_arn" {
  description = "Secrets Manager secret behind the Kubernetes Secret keel-database."
  value       = module.keel.database_secret_arn
}

output "redis_secret_arn" {
  description = "Secrets Manager secret behind the Kubernetes Secret keel-redis."
  value       = module.keel.redis_secret_arn
}

output "secrets_read_policy_json" {
  description = "IAM policy for External Secrets Operator's role."
  value       = module.keel.secrets_read_policy_json
}
