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
# Tags
################################################################################

variable "tags" {
  description = "Extra tags for every resource; the stacklock tags (project, environment, stack, fingerprint, managed-by) always win."
  type        = map(string)
  default     = {}
  nullable    = false
}
