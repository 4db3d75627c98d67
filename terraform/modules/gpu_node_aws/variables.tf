################################################################################
# Identity: what these nodes are, written into every tag
################################################################################

variable "project" {
  description = "Project name from the stacklock manifest; prefixes every resource name."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,30}[a-z0-9]$", var.project))
    error_message = "project must be 2-32 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "environment" {
  description = "Environment name (dev, staging, prod, ...) from the stacklock manifest."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,30}[a-z0-9]$", var.environment))
    error_message = "environment must be 2-32 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "stack_name" {
  description = "Name of the pinned stack (manifest `stacks.<name>`) the nodes run."
  type        = string
  nullable    = false

  validation {
    condition     = length(var.stack_name) > 0
    error_message = "stack_name must not be empty."
  }
}

variable "fingerprint" {
  description = "Fingerprint of the locked stack, `sha256:<64 hex>`, from the stacklock lock file."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^sha256:[0-9a-f]{64}$", var.fingerprint))
    error_message = "fingerprint must look like sha256:<64 lowercase hex digits>."
  }
}

################################################################################
# Instances
################################################################################

variable "ami_id" {
  description = "Pinned AMI id for this region, resolved by `stacklock lock` from the stack's owner and exact image name. Never looked up at apply time."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "ami_id must be an AMI id such as ami-0123456789abcdef0."
  }
}

variable "instance_type" {
  description = "EC2 instance type with a GPU the stack was validated for, e.g. g6e.xlarge."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.instance_type))
    error_message = "instance_type must look like g6e.xlarge."
  }
}

variable "instance_count" {
  description = "Number of identical GPU nodes in this environment."
  type        = number
  default     = 1
  nullable    = false

  validation {
    condition     = var.instance_count >= 1 && var.instance_count <= 100 && floor(var.instance_count) == var.instance_count
    error_message = "instance_count must be a whole number from 1 to 100."
  }
}

variable "root_volume_size" {
  description = "Size of the encrypted gp3 root volume in GiB (drivers, CUDA, Docker images, models)."
  type        = number
  default     = 200
  nullable    = false

  validation {
    condition     = var.root_volume_size >= 30 && var.root_volume_size <= 16384
    error_message = "root_volume_size must be between 30 and 16384 GiB."
  }
}

variable "key_name" {
  description = "Name of an existing EC2 key pair for SSH, or null to rely on SSM or keys installed otherwise."
  type        = string
  default     = null
}

variable "access" {
  description = "How the controller reaches the nodes: `public` (SSH to a public address), `bastion` (SSH to the private address through a jump host) or `ssm` (AWS Systems Manager, no public address)."
  type        = string
  default     = "ssm"
  nullable    = false

  validation {
    condition     = contains(["public", "bastion", "ssm"], var.access)
    error_message = "access must be one of public, bastion, ssm."
  }
}

################################################################################
# Placement
################################################################################

variable "vpc_id" {
  description = "VPC for the security group; null uses the region's default VPC."
  type        = string
  default     = null

  validation {
    condition     = var.vpc_id == null || can(regex("^vpc-[0-9a-f]{8,17}$", var.vpc_id))
    error_message = "vpc_id must be null or a VPC id such as vpc-0123456789abcdef0."
  }
}

variable "subnet_ids" {
  description = "Subnets the nodes are spread over (round robin); empty uses the default subnets. Needs vpc_id."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for s in var.subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", s))])
    error_message = "subnet_ids must be subnet ids such as subnet-0123456789abcdef0."
  }
}

variable "availability_zones" {
  description = "Availability zones the nodes are spread over (round robin) when no subnet_ids are given."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for z in var.availability_zones : can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9][a-z]$", z))])
    error_message = "availability_zones must be zone names such as us-east-1a."
  }
}

################################################################################
# Network access
################################################################################

variable "admin_cidrs" {
  description = "CIDR blocks allowed to reach SSH (22). Never the whole internet."
  type        = list(string)
  nullable    = false

  validation {
    condition     = length(var.admin_cidrs) > 0 && alltrue([for c in var.admin_cidrs : can(cidrhost(c, 0)) && !contains(["0.0.0.0/0", "::/0"], c)])
    error_message = "admin_cidrs must be one or more CIDR blocks, none of them 0.0.0.0/0 or ::/0."
  }
}

variable "client_cidrs" {
  description = "CIDR blocks allowed to reach the TorchServe inference API."
  type        = list(string)
  nullable    = false

  validation {
    condition     = length(var.client_cidrs) > 0 && alltrue([for c in var.client_cidrs : can(cidrhost(c, 0))])
    error_message = "client_cidrs must be one or more CIDR blocks."
  }
}

variable "inference_port" {
  description = "TorchServe inference port opened to client_cidrs. The management (8081) and metrics (8082) ports are never opened."
  type        = number
  default     = 8080
  nullable    = false

  validation {
    condition     = var.inference_port >= 1024 && var.inference_port <= 65535 && !contains([8081, 8082], var.inference_port)
    error_message = "inference_port must be 1024-65535 and never the management (8081) or metrics (8082) port."
  }
}

variable "egress_cidrs" {
  description = "Where the nodes may open HTTP/HTTPS connections (package repositories, PyPI, SSM endpoints). Narrow it to an internal mirror when there is one."
  type        = list(string)
  default     = ["0.0.0.0/0"]
  nullable    = false

  validation {
    condition     = length(var.egress_cidrs) > 0 && alltrue([for c in var.egress_cidrs : can(cidrhost(c, 0))])
    error_message = "egress_cidrs must be one or more CIDR blocks."
  }
}

################################################################################
# Client endpoint (endpoint.tf): a load balancer per environment
################################################################################

variable "endpoint_enabled" {
  description = "Put an Application Load Balancer in front of the nodes: HTTPS on endpoint_port from client_cidrs with the ACM certificate, forwarded to every node's endpoint (nginx, HTTPS on endpoint_port). The nodes then take client traffic from the load balancer only. False creates nothing of it."
  type        = bool
  default     = false
  nullable    = false
}

variable "endpoint_port" {
  description = "Port of the endpoint's HTTPS listener, the one clients use and client_cidrs may reach."
  type        = number
  default     = 443
  nullable    = false

  validation {
    condition     = var.endpoint_port >= 1 && var.endpoint_port <= 65535 && floor(var.endpoint_port) == var.endpoint_port
    error_message = "endpoint_port must be a whole number from 1 to 65535."
  }
}

variable "endpoint_acm_certificate_arn" {
  description = "ARN of the ACM certificate the endpoint's listener presents, in the environment's region (the manifest names it). Required when endpoint_enabled."
  type        = string
  default     = ""
  nullable    = false

  validation {
    condition     = var.endpoint_acm_certificate_arn == "" || can(regex("^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/[0-9a-f-]+$", var.endpoint_acm_certificate_arn))
    error_message = "endpoint_acm_certificate_arn must be an ACM certificate ARN such as arn:aws:acm:us-east-1:123456789012:certificate/0a1b2c3d-4e5f-6789-abcd-ef0123456789."
  }

  validation {
    condition     = !var.endpoint_enabled || var.endpoint_acm_certificate_arn != ""
    error_message = "endpoint_enabled needs endpoint_acm_certificate_arn: name the ACM certificate (in the environment's region) that the endpoint presents to clients."
  }
}

variable "endpoint_health_check_path" {
  description = "Path the load balancer asks on every node (GET, no credential, expecting 200) to decide whether it may send it requests: /ping by default, which the node's nginx answers from TorchServe's /ping (200 only while the server and its model workers are healthy)."
  type        = string
  default     = "/ping"
  nullable    = false

  validation {
    condition     = length(var.endpoint_health_check_path) <= 1024 && can(regex("^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$", var.endpoint_health_check_path))
    error_message = "endpoint_health_check_path must be an absolute URL path such as /ping (at most 1024 characters, no spaces or query)."
  }
}

variable "endpoint_target_port" {
  description = "Port on the nodes the load balancer forwards to and health-checks: null uses endpoint_port, where the serving_endpoint role's nginx listens on every node."
  type        = number
  default     = null

  validation {
    condition     = var.endpoint_target_port == null || try(var.endpoint_target_port >= 1 && var.endpoint_target_port <= 65535 && !contains([8081, 8082], var.endpoint_target_port), false)
    error_message = "endpoint_target_port must be null or 1-65535, and never TorchServe's management (8081) or metrics (8082) port."
  }
}

variable "endpoint_target_protocol" {
  description = "Protocol from the load balancer to the nodes: HTTPS (the node's nginx terminates TLS; the load balancer does not check the node's certificate) or HTTP for a plain-HTTP target reachable only from the load balancer's security group."
  type        = string
  default     = "HTTPS"
  nullable    = false

  validation {
    condition     = contains(["HTTP", "HTTPS"], var.endpoint_target_protocol)
    error_message = "endpoint_target_protocol must be HTTP or HTTPS."
  }
}

variable "endpoint_subnet_ids" {
  description = "Subnets of the load balancer, in two or more availability zones: public subnets for an internet-facing endpoint. Empty uses subnet_ids, or the default VPC's default subnets. Needs vpc_id."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for s in var.endpoint_subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", s))])
    error_message = "endpoint_subnet_ids must be subnet ids such as subnet-0123456789abcdef0."
  }
}

variable "endpoint_idle_timeout" {
  description = "Seconds the load balancer keeps a connection without data: the longest prediction a client may wait for (the node's nginx waits 300 s for TorchServe)."
  type        = number
  default     = 300
  nullable    = false

  validation {
    condition     = var.endpoint_idle_timeout >= 1 && var.endpoint_idle_timeout <= 4000
    error_message = "endpoint_idle_timeout must be between 1 and 4000 seconds."
  }
}

variable "endpoint_access_log_days" {
  description = "Days the endpoint's access logs are kept in its S3 bucket."
  type        = number
  default     = 90
  nullable    = false

  validation {
    condition     = var.endpoint_access_log_days >= 1 && floor(var.endpoint_access_log_days) == var.endpoint_access_log_days
    error_message = "endpoint_access_log_days must be a whole number of days, at least 1."
  }
}

################################################################################
# Serving image repository (ecr.tf): ECR with immutable tags
################################################################################

variable "ecr_enabled" {
  description = "Create the environment's ECR repository <project>/<environment>/serving (immutable tags, scan on push, encrypted, untagged images expired) and let the nodes' role pull from it alone. render sets it for stacks with serving.runtime container. False creates nothing of it."
  type        = bool
  default     = false
  nullable    = false
}

variable "ecr_kms_key_arn" {
  description = "ARN of a customer-managed KMS key for the repository's images; null (the default) encrypts with AES256 (the module holds no KMS key of its own). A given key's policy must let the nodes' role decrypt."
  type        = string
  default     = null

  validation {
    condition     = var.ecr_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[0-9a-f-]{36}$", var.ecr_kms_key_arn))
    error_message = "ecr_kms_key_arn must be null or a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)."
  }
}

variable "ecr_untagged_days" {
  description = "Days after which an untagged image of the repository expires. Every image stacklock pushes carries an immutable tag (fp-<lock fingerprint>), so no image a lock names is ever untagged or expired."
  type        = number
  default     = 14
  nullable    = false

  validation {
    condition     = var.ecr_untagged_days >= 1 && floor(var.ecr_untagged_days) == var.ecr_untagged_days
    error_message = "ecr_untagged_days must be a whole number of days, 1 or more."
  }
}

################################################################################
# Tags
################################################################################

variable "tags" {
  description = "Extra tags for every resource; the stacklock tags (project, environment, stack, fingerprint, managed-by) always win."
  type        = map(string)
  default     = {}
  nullable    = false
}
