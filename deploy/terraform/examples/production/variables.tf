variable "region" {
  description = "AWS region to deploy into, e.g. eu-west-1."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as eu-west-1."
  }
}

variable "name" {
  description = "Name of the deployment; prefixes every resource."
  type        = string
  default     = "keel-prod"
}

variable "cluster_endpoint_public_access_cidrs" {
  description = "Addresses allowed to reach the Kubernetes API from the internet (your office or VPN egress). Empty keeps the endpoint private."
  type        = list(string)
  default     = []
}
